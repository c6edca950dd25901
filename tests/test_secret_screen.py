"""The screen's memory of clean lines: a large changed file gives the answer matching it whole gives.

``wmill-lock.yaml`` changes with nearly every script, flow or app, and
matching the screen over all of it was most of a one-item sync's scan. The
screen now matches only the lines a large file gained since it was last
screened clean; these tests hold that to the whole-file answer, on random
edits made of real secrets, lookalikes and the YAML shapes that only
parsing turns into a match, and end to end through the scanner.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.inputs.requests import parse_sync_request
from gitsync.jobs.runner import SyncRunner
from gitsync.jobs.store import JobStore
from gitsync.secretscan.scan import HIGH_CONFIDENCE_DETECTORS, OUR_DETECTORS, SecretScanner
from gitsync.secretscan.screen import REMEMBER_FROM_BYTES, Screen
from tests.conftest import Target
from tests.secret_samples import LOOKALIKES, rsa_pkcs1, true_secrets
from tests.servers.windmill_emulator import WindmillEmulator


def _lock_lines(n: int) -> list[str]:
    lines = ["version: v2", "locks:"]
    for i in range(n):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        lines.append(f"  f/team{i % 7}/script_{i}+__flow_hash: {digest}")
    return lines


BASE = _lock_lines(300)
IBM_KEY = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZk1hY2hp"
# Lines that may make a match alone, or with another line, or only once parsed.
POOL = sorted(
    {line for s in true_secrets() + LOOKALIKES for line in s.content.split("\n") if line.strip()}
    | {
        "  ibm_cloud_api_key:",  # a keyword whose value is on the next line
        "    " + IBM_KEY,  # a long value
        '  token: "\\x67hp_' + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8" + '"',  # an escape
        "  base: &anchor value",
        "  other: *anchor",
        "  aws_secret_key: " + "A" * 40,
        "  f/team0/refresh_token_job+__flow_hash: " + "0" * 64,
    }
)
assert len("\n".join(BASE)) >= REMEMBER_FROM_BYTES


def _new_screen() -> Screen:
    return Screen(HIGH_CONFIDENCE_DETECTORS, OUR_DETECTORS)


edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.integers(min_value=0, max_value=len(BASE) - 1),
        st.sampled_from(POOL),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.sampled_from(["wmill-lock.yaml", "f/team/big.ts", "f/team/big.resource.yaml"]),
    steps=st.lists(edits, min_size=1, max_size=4),
)
def test_a_remembering_screen_answers_as_a_fresh_one(
    tmp_path: Path, name: str, steps: list[list[tuple[str, int, str]]]
) -> None:
    path = tmp_path / name.replace("/", "_")
    lines = list(BASE)
    remembering = _new_screen()
    path.write_text("\n".join(lines))
    assert remembering.may_hold_a_secret(str(path)) is False
    for step in steps:
        for action, at, line in step:
            at = min(at, len(lines) - 1)
            if action == "insert":
                lines.insert(at, line)
            elif action == "delete" and len(lines) > 3:
                del lines[at]
            else:
                lines[at] = line
        path.write_text("\n".join(lines))
        assert remembering.may_hold_a_secret(str(path)) == _new_screen().may_hold_a_secret(
            str(path)
        ), step


def test_a_token_added_to_a_remembered_lock_file_is_found(tmp_path: Path) -> None:
    """End to end through the scanner: the clean lines are remembered, the new one is not."""
    lock = tmp_path / "wmill-lock.yaml"
    lock.write_text("\n".join(BASE) + "\n")
    scanner = SecretScanner()
    files = {"wmill-lock.yaml": str(lock)}
    assert scanner.scan(files) == []
    token = next(s for s in true_secrets() if s.name == "github-classic")
    value = token.value
    lock.write_text("\n".join([*BASE[:100], f"  token: {value}", *BASE[100:]]) + "\n")
    findings = scanner.scan(files)
    assert [(f.file, f.line, f.detector) for f in findings] == [
        ("wmill-lock.yaml", 101, "GitHub Token")
    ]
    # Held, so not remembered as clean: the next scan of the same file finds it again.
    assert [f.line for f in scanner.scan(files)] == [101]


def test_a_key_block_filled_in_under_a_remembered_header_is_found(tmp_path: Path) -> None:
    """A header line seen before is not clean: the file was not remembered, and is scanned whole."""
    header, *body = rsa_pkcs1().strip().split("\n")
    script = tmp_path / "f_team_big.ts"
    filler = [f"// line {i} {'x' * 60}" for i in range(400)]
    script.write_text("\n".join([*filler, f"const KEY = `{header}", "...", "`;"]))
    scanner = SecretScanner()
    files = {"f/team/big.ts": str(script)}
    assert scanner.scan(files) == []  # a header with nothing behind it is a lookalike
    script.write_text("\n".join([*filler, f"const KEY = `{header}", *body, "`;"]))
    assert [f.detector for f in scanner.scan(files)] == ["Private Key"]


def test_a_value_added_under_a_remembered_keyword_is_parsed(tmp_path: Path) -> None:
    """The keyword was in a clean line; the value arrives on the next line, which parsing joins."""
    lock = tmp_path / "wmill-lock.yaml"
    at = 150
    with_keyword = [*BASE[:at], "  ibm_cloud_api_key:", *BASE[at:]]
    lock.write_text("\n".join(with_keyword))
    screen = _new_screen()
    assert screen.may_hold_a_secret(str(lock)) is False
    value = "    " + IBM_KEY
    lock.write_text("\n".join([*with_keyword[: at + 1], value, *with_keyword[at + 1 :]]))
    assert _new_screen().may_hold_a_secret(str(lock)) is True  # only once parsed
    assert screen.may_hold_a_secret(str(lock)) is True


def test_a_learned_file_answers_as_a_fresh_screen(tmp_path: Path) -> None:
    """``learn`` remembers what a scan would: the next change is matched line by line, same answer."""
    lock = tmp_path / "wmill-lock.yaml"
    lock.write_text("\n".join(BASE))
    screen = _new_screen()
    screen.learn(str(lock))
    assert screen.knows(str(lock))
    token = next(s for s in true_secrets() if s.name == "github-classic").value
    lock.write_text("\n".join([*BASE[:10], f"  token: {token}", *BASE[10:]]))
    assert screen.may_hold_a_secret(str(lock)) is True
    assert not screen.knows(str(lock))  # held: screened whole next time
    small = tmp_path / "small.yaml"
    small.write_text("a: b\n")
    screen.learn(str(small))
    screen.learn(str(tmp_path / "gone.yaml"))
    assert not screen.knows(str(small)) and not screen.knows(str(tmp_path / "gone.yaml"))


def test_a_file_learned_not_clean_is_screened_again_only_once_changed(tmp_path: Path) -> None:
    """After every answer, an unchanged lock file holding credentials is not screened whole again."""
    lock = tmp_path / "wmill-lock.yaml"
    token = next(s for s in true_secrets() if s.name == "github-classic").value
    held = "\n".join([*BASE[:10], f"  token: {token}", *BASE[10:]])
    lock.write_text(held)
    screen = _new_screen()
    screen.learn(str(lock))
    assert not screen.knows(str(lock))
    # Clean now, but the same size, time and inode: taken for the file already screened.
    stat = lock.stat()
    with open(lock, "r+") as handle:
        handle.write(held.replace(token, "x" * len(token)))
    os.utime(lock, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    screen.learn(str(lock))
    assert not screen.knows(str(lock))
    lock.write_text(held.replace(token, "x" * len(token)) + "\n")  # changed: learned
    screen.learn(str(lock))
    assert screen.knows(str(lock))


def test_after_answering_the_service_learns_the_lock_file(
    target: Target, windmill: WindmillEmulator, ca_pem: Path, tmp_path: Path
) -> None:
    """The first change after a start scans only the lock file's new lines, once a sync has run.

    Here the service starts on a backup already made, and the syncs leave
    ``wmill-lock.yaml`` as it was: the commit's scan never reads it, so only
    the runner's work after each answer can have the screen remember it.
    """
    target.workspace.seed_synthetic(200)
    settings = Settings.from_mapping(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": str(ca_pem),
        }
    )
    job = parse_sync_request(target.body()).to_job()
    SyncService(settings).sync(job)
    (lock,) = (tmp_path / "data").glob("targets/*/export/wmill-lock.yaml")
    assert lock.stat().st_size >= REMEMBER_FROM_BYTES

    restarted = SyncService(settings)
    target.workspace.add_variable("f/screen/plain", value="not a secret")
    assert restarted.sync(job).changed
    assert not restarted.scanner.knows(str(lock))  # the sync itself did not read it

    runner = SyncRunner(restarted, JobStore(tmp_path / "jobs.sqlite", 10), settings)
    try:
        assert runner.submit(job).run.future.result(timeout=120).changed is False
        deadline = time.monotonic() + 30
        while not runner.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.idle
    finally:
        runner.close()
    assert restarted.scanner.knows(str(lock))
