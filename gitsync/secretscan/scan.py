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

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_file
from detect_secrets.settings import cache_bust, configure_settings_from_baseline

from gitsync.config import SecretScanPolicy as Policy
from gitsync.deadline import Deadline
from gitsync.secretscan import detectors, lookalikes
from gitsync.secretscan.screen import Screen
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
        # The entropy detectors have no regex to screen files with.
        self._screen = None if entropy else Screen(HIGH_CONFIDENCE_DETECTORS, OUR_DETECTORS)
        # Names what this scanner finds, for the skip check's record.
        self.name = "entropy" if entropy else "keyed"

    def learn(self, path: str) -> None:
        """Screen ``path`` now, so that the scan of its next version matches only its new lines."""
        if self._screen is not None:
            self._screen.learn(path)

    def knows(self, path: str) -> bool:
        """Whether the screen remembers ``path`` as clean (its next scan matches new lines only)."""
        return self._screen is not None and self._screen.knows(path)

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
            if self._screen is not None and not self._screen.may_hold_a_secret(files[rel]):
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
