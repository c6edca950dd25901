"""The secret scan's precision and recall on a labelled set, against detect-secrets' own scan.

A finding must mean a secret is there (code that handles keys, placeholders
and documentation examples are not findings), and the service must find at
least what detect-secrets finds with the same detectors on the same files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from detect_secrets.core.scan import scan_file

from gitsync.secretscan import scan as scan_module
from gitsync.secretscan.scan import SecretScanner
from tests.secret_samples import LOOKALIKES, Sample, true_secrets


def write(root: Path, samples: list[Sample]) -> dict[str, str]:
    files = {}
    for sample in samples:
        path = root / sample.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(sample.content)
        files[sample.path] = str(path)
    return files


def detect_secrets_alone(scanner: SecretScanner, path: str) -> set[tuple[int, str]]:
    """detect-secrets' scan_file with the service's detectors, without its filters."""
    config = {"plugins_used": scanner._config["plugins_used"]}
    with scan_module._settings(config):
        return {(s.line_number, s.type) for s in scan_file(path)}


def test_precision_and_recall_on_the_labelled_set(tmp_path: Path) -> None:
    samples = true_secrets() + LOOKALIKES
    files = write(tmp_path, samples)
    scanner = SecretScanner()
    findings = scanner.scan(files)
    flagged = {f.file for f in findings}
    true_positives = [s for s in samples if s.secret and s.path in flagged]
    false_positives = [s for s in samples if not s.secret and s.path in flagged]
    missed = [s for s in samples if s.secret and s.path not in flagged]
    precision = len(true_positives) / max(len(true_positives) + len(false_positives), 1)
    recall = len(true_positives) / max(len(true_positives) + len(missed), 1)
    print(
        f"\nsecret scan on {len(samples)} labelled files: precision {precision:.0%}, "
        f"recall {recall:.0%}; false positives {[s.name for s in false_positives]}, "
        f"missed {[s.name for s in missed]}"
    )
    assert (precision, recall) == (1.0, 1.0)
    for sample in samples:
        if sample.secret:
            detectors = {f.detector for f in findings if f.file == sample.path}
            assert sample.secret in detectors, sample.name


def test_the_lookalikes_are_what_detect_secrets_alone_reports(tmp_path: Path) -> None:
    """The set is not a straw man: detect-secrets alone flags most lookalikes."""
    files = write(tmp_path, LOOKALIKES)
    scanner = SecretScanner()
    flagged_alone = [s.name for s in LOOKALIKES if detect_secrets_alone(scanner, files[s.path])]
    print(f"\ndetect-secrets alone flags {len(flagged_alone)} of {len(LOOKALIKES)} lookalikes")
    for shape in (
        "pgp-regex",
        "replace-argument",
        "placeholder-resource",
        "local-postgres-changeme",
        "local-postgres-name-to-fill",
        "aws-documentation-pair",
    ):
        assert shape in flagged_alone
    assert scanner.scan(files) == []


@pytest.mark.parametrize("sample", true_secrets(), ids=lambda s: s.name)
def test_every_true_finding_of_detect_secrets_is_the_services(
    tmp_path: Path, sample: Sample
) -> None:
    files = write(tmp_path, [sample])
    scanner = SecretScanner()
    alone = detect_secrets_alone(scanner, files[sample.path])
    ours = {(f.line, f.detector) for f in scanner.scan(files)}
    assert ours, sample.name
    # detect-secrets' "indirect reference" heuristic drops OpenAI(api_key="…"): we keep it.
    assert ours >= alone


def test_a_yaml_escape_does_not_hide_a_token_from_the_screen(tmp_path: Path) -> None:
    """detect-secrets decodes YAML before it scans; the screen reads what it reads."""
    sample = next(s for s in true_secrets() if s.name == "github-classic-yaml-escaped")
    assert sample.value not in sample.content  # written as "\x67hp_…"
    files = write(tmp_path, [sample])
    findings = SecretScanner().scan(files)
    assert [(f.file, f.detector) for f in findings] == [(sample.path, "GitHub Token")]


def test_the_scan_stops_at_the_sync_deadline(tmp_path: Path) -> None:
    from gitsync.deadline import Deadline
    from gitsync.errors import SyncTimeout

    files = write(tmp_path, true_secrets())
    with pytest.raises(SyncTimeout):
        SecretScanner().scan(files, deadline=Deadline(0))
