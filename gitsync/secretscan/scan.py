"""Secrets written into scripts: found before the Git host, or the public, sees them.

Windmill users paste API keys into scripts, flows and resources. A backup
would copy them into Git, readable by anyone with access to the repository,
forever, in history; GitHub's push protection would refuse the push and the
backup would stop. So the files a sync adds or changes are scanned before
the commit with Yelp's ``detect-secrets`` (the reference scanner, pure
Python, line-based, with a documented inline allowlist). Only its keyed,
high-confidence detectors run by default; the entropy detectors, which flag
ordinary hashes and ids in scripts, only when the operator asks for them.

A known false positive is accepted by the scanner's own inline comment on
its line, ``pragma: allowlist secret``: it lives in the script itself, so it
survives every later sync and shows in review. Findings name the Windmill
item, the file, the line and the detector, never the value.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_file
from detect_secrets.settings import cache_bust, configure_settings_from_baseline
from detect_secrets.transformers import get_transformed_file
from detect_secrets.util.filetype import FileType, determine_file_type

from gitsync.config import SecretScanPolicy as Policy
from gitsync.deadline import Deadline
from gitsync.secretscan import detectors, lookalikes
from gitsync.windmill import items

# Detectors of one provider's key format: a match is almost surely a secret.
HIGH_CONFIDENCE_DETECTORS = (
    "AWSKeyDetector",
    "ArtifactoryDetector",
    "AzureStorageKeyDetector",
    "BasicAuthDetector",
    "CloudantDetector",
    "DiscordBotTokenDetector",
    "GitHubTokenDetector",
    "GitLabTokenDetector",
    "IbmCloudIamDetector",
    "IbmCosHmacDetector",
    "JwtTokenDetector",
    "MailchimpDetector",
    "NpmDetector",
    "OpenAIDetector",
    "PrivateKeyDetector",
    "PypiTokenDetector",
    "SendGridDetector",
    "SlackDetector",
    "SoftlayerDetector",
    "SquareOAuthDetector",
    "StripeDetector",
    "TelegramBotTokenDetector",
    "TwilioKeyDetector",
)
# Ours, for what detect-secrets does not know (detectors.py).
OUR_DETECTORS: tuple[Any, ...] = (detectors.GitHubFineGrainedTokenDetector,)
# Off unless configured: in scripts they mostly find hashes, ids and lock files.
ENTROPY_DETECTORS = (
    {"name": "Base64HighEntropyString", "limit": 4.5},
    {"name": "HexHighEntropyString", "limit": 3.0},
)
ALLOWLIST_COMMENT = "pragma: allowlist secret"
# detect-secrets' own filters, but one: its "indirect reference" heuristic
# drops any match on a line shaped ``x = f(...)``, made for its keyword
# detector; for a provider's key it drops ``OpenAI(api_key="sk-…")``.
BUILT_IN_FILTERS = (
    "detect_secrets.filters.allowlist.is_line_allowlisted",
    "detect_secrets.filters.heuristic.is_sequential_string",
    "detect_secrets.filters.heuristic.is_potential_uuid",
    "detect_secrets.filters.heuristic.is_likely_id_string",
    "detect_secrets.filters.heuristic.is_templated_secret",
    "detect_secrets.filters.heuristic.is_prefixed_with_dollar_sign",
    "detect_secrets.filters.heuristic.is_lock_file",
    "detect_secrets.filters.heuristic.is_not_alphanumeric_string",
    "detect_secrets.filters.heuristic.is_swagger_file",
)

# From the loosest to the strictest: hold pushes less than warn, block nothing.
_STRICTNESS = (Policy.OFF, Policy.WARN, Policy.HOLD, Policy.BLOCK)


def effective_policy(operator: Policy, requested: Policy | None, *, may_loosen: bool) -> Policy:
    """The operator's policy, narrowed by a request; loosened only if the operator allows it."""
    if requested is None:
        return operator
    if may_loosen or _STRICTNESS.index(requested) >= _STRICTNESS.index(operator):
        return requested
    return operator


@dataclass(frozen=True)
class Finding:
    file: str  # relative to the repository's root, as committed
    line: int
    detector: str
    item: str  # "script f/team/etl", or the file when it belongs to no item

    def to_dict(self) -> dict[str, object]:
        return {"item": self.item, "file": self.file, "line": self.line, "detector": self.detector}

    def describe(self) -> str:
        return f"{self.item}: {self.file} line {self.line} ({self.detector})"


@dataclass(frozen=True)
class HeldItem:
    """An item kept out of a sync for its findings; the backup has an older version, or none."""

    item: str  # as findings name it: "script f/team/etl", or the file
    files: tuple[str, ...]  # the repository paths kept as they were
    previous: bool  # the backup keeps an older version (else: not at all)
    findings: tuple[Finding, ...]

    @property
    def backed_up(self) -> str:
        return "older version" if self.previous else "not at all"

    def to_dict(self) -> dict[str, object]:
        return {
            "item": self.item,
            "backed_up": self.backed_up,
            "findings": [f.to_dict() for f in self.findings],
        }

    def describe(self) -> str:
        where = ", ".join(f"{f.file} line {f.line} ({f.detector})" for f in self.findings)
        kept = "its previous version" if self.previous else "no copy"
        return f"{self.item} ({where}; the backup keeps {kept})"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldItem:
        findings = tuple(
            Finding(str(f["file"]), int(f["line"]), str(f["detector"]), str(data["item"]))
            for f in data["findings"]
        )
        return cls(str(data["item"]), (), data["backed_up"] == "older version", findings)


class SecretScanner:
    def __init__(self, *, entropy: bool = False) -> None:
        plugins: list[dict[str, object]] = [{"name": n} for n in HIGH_CONFIDENCE_DETECTORS]
        plugins.extend(
            {"name": cls.__name__, "path": f"file://{detectors.__file__}"} for cls in OUR_DETECTORS
        )
        if entropy:
            plugins.extend(dict(p) for p in ENTROPY_DETECTORS)
        self._config = {
            "plugins_used": plugins,
            "filters_used": [{"path": path} for path in (*BUILT_IN_FILTERS, *lookalikes.FILTERS)],
        }
        # The keyed detectors are line regexes: a file none of them matches
        # in any line the scanner would read cannot hold a finding, and
        # skips the scanner's per-file work (its filters: ~5 ms a file, most
        # of a first sync's scan). The entropy detectors have no such regex.
        self._screen = None if entropy else _screen(HIGH_CONFIDENCE_DETECTORS, OUR_DETECTORS)
        # Names what this scanner finds, for the skip check's record.
        self.name = "entropy" if entropy else "keyed"

    def scan(
        self, files: Mapping[str, str], prefix: str = "", deadline: Deadline | None = None
    ) -> list[Finding]:
        """Findings in ``files`` (path in the export -> path on disk), in path and line order.

        ``prefix`` is where the export lives in the repository, so that a
        finding names the file as the repository shows it. The sync's
        ``deadline`` is checked before each file.
        """
        findings: list[Finding] = []
        for rel in sorted(files):
            if deadline is not None:
                deadline.for_command(float("inf"))  # raises once the sync is out of time
            if self._screen is not None and not _may_hold_a_secret(files[rel], self._screen):
                continue
            ref = items.item_of(rel)
            item = f"{ref.kind} {ref.path}" if ref else rel
            shown = f"{prefix}/{rel}" if prefix else rel
            with _settings(self._config):
                found = [(s.line_number, s.type) for s in scan_file(files[rel])]
            findings.extend(Finding(shown, line, detector, item) for line, detector in found)
        findings.sort(key=lambda f: (f.file, f.line, f.detector))
        return findings


# detect-secrets keeps its settings in a process-wide singleton: one file is
# scanned at a time, and the settings change only when another configuration
# (a scanner with the entropy detectors, in tests) asks for them. So
# concurrent syncs take turns file by file, never a whole scan each.
_SETTINGS_LOCK = threading.Lock()
_active_config: list[dict[str, Any]] = []


@contextmanager
def _settings(config: dict[str, Any]) -> Iterator[None]:
    with _SETTINGS_LOCK:
        if _active_config != [config]:
            cache_bust()
            # Which classes exist depends on the plugins configured (ours is a file).
            get_mapping_from_secret_type_to_class.cache_clear()
            configure_settings_from_baseline(config)
            _active_config[:] = [config]
        yield


def _screen(names: tuple[str, ...], ours: tuple[Any, ...]) -> list[re.Pattern[str]]:
    """The detectors' own regexes, one per set of flags, made to work on a whole file."""
    # detect-secrets ships no type hints: its classes are Any here.
    plugin_classes: list[Any] = list(get_mapping_from_secret_type_to_class().values())
    classes: dict[str, Any] = {c.__name__: c for c in plugin_classes}
    by_flags: dict[int, list[str]] = {}
    for cls in [classes[name] for name in names] + list(ours):
        for pattern in cls().denylist:
            by_flags.setdefault(pattern.flags, []).append(pattern.pattern)
    # MULTILINE: a pattern anchored to a line's start or end still is.
    return [
        re.compile("|".join(f"(?:{p})" for p in patterns), flags | re.MULTILINE)
        for flags, patterns in by_flags.items()
    ]


def _may_hold_a_secret(path: str, screen: list[re.Pattern[str]]) -> bool:
    """Whether a detector's regex matches any line the scanner would read in ``path``.

    The lines are the scanner's own: it decodes YAML (``"\\x67hp_…"`` is a
    GitHub token there) and reads config-like files as key = "value", so
    matching the raw text alone could miss what it finds. The raw text is
    matched first (most files stop there); a YAML file is parsed only when
    parsing could make a match (an escape, or a pattern that needs quotes the
    parser adds); other files are read as the scanner reads them.
    """
    try:
        with open(path) as handle:
            raw = handle.read()
    except UnicodeDecodeError:
        return False  # the scanner skips files that are not text, too
    if _matches(raw, screen):
        return True
    if determine_file_type(path) == FileType.YAML and not _may_change_on_parsing(raw):
        return False
    with open(path) as handle:
        passes = [get_transformed_file(handle)]  # type: ignore[arg-type]
        handle.seek(0)
        passes.append(get_transformed_file(handle, use_eager_transformers=True))  # type: ignore[arg-type]
    return any(_matches("\n".join(lines), screen) for lines in passes if lines)


def _matches(text: str, screen: list[re.Pattern[str]]) -> bool:
    return any(pattern.search(text) for pattern in screen)


def _may_change_on_parsing(raw: str) -> bool:
    """Whether the scanner's YAML parsing could make a match the raw text lacks.

    Parsed, a YAML value is the raw text less its quoting, on its key's line.
    What can differ: escapes and line continuations (a backslash), tags
    (``!!binary``), anchors (an alias's value read under another key), a
    pattern that needs the double quotes the parser puts around every value,
    and the keyword patterns, whose key and value the parser brings onto
    one line when the value was written on the next.
    """
    return (
        "\\" in raw
        or "!!" in raw
        or _ANCHOR.search(raw) is not None
        or _QUOTED_ON_PARSING.search(raw) is not None
        or (_KEYWORD.search(raw) is not None and _LONG_VALUE.search(raw) is not None)
    )


_ANCHOR = re.compile(r"(?:^|[\s:\-\[,{])&[^\s,\]}]+", re.MULTILINE)
# An AWS secret key ("…" or '…' around 40 characters), an Artifactory token
# (" before it): written with the quotes optional.
_QUOTED_ON_PARSING = re.compile(
    r"aws.{0,20}?(?:key|pwd|pw|password|pass|token).{0,20}?[\'\"]?[0-9a-zA-Z/+]{40}"
    r"|(?:AKC[a-zA-Z0-9]{10,}|AP[\dABCDEF][a-zA-Z0-9]{8,})",
    re.IGNORECASE,
)
# The Cloudant, IBM and SoftLayer patterns: a keyword, then a value of 24
# characters or more.
_KEYWORD = re.compile(r"key|pwd|pw|pass|token", re.IGNORECASE)
_LONG_VALUE = re.compile(r"[a-zA-Z0-9_\-]{24,}")
