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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.core.scan import scan_file
from detect_secrets.settings import transient_settings

from gitsync.config import SecretScanPolicy as Policy
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
# Off unless configured: in scripts they mostly find hashes, ids and lock files.
ENTROPY_DETECTORS = (
    {"name": "Base64HighEntropyString", "limit": 4.5},
    {"name": "HexHighEntropyString", "limit": 3.0},
)
ALLOWLIST_COMMENT = "pragma: allowlist secret"

_STRICTNESS = (Policy.OFF, Policy.WARN, Policy.BLOCK)
# detect-secrets keeps its settings in a process-wide singleton.
_SETTINGS_LOCK = threading.Lock()


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


class SecretScanner:
    def __init__(self, *, entropy: bool = False) -> None:
        plugins: list[dict[str, object]] = [{"name": n} for n in HIGH_CONFIDENCE_DETECTORS]
        if entropy:
            plugins.extend(dict(p) for p in ENTROPY_DETECTORS)
        self._config = {"plugins_used": plugins}
        # The keyed detectors are line regexes: a file none of them matches
        # anywhere cannot hold a finding, and skips the scanner's per-file
        # work (its filters and YAML parsing: ~5 ms a file, most of a first
        # sync's scan). The entropy detectors have no such regex.
        self._screen = None if entropy else _screen(HIGH_CONFIDENCE_DETECTORS)

    def scan(self, files: Mapping[str, str], prefix: str = "") -> list[Finding]:
        """Findings in ``files`` (path in the export -> path on disk), in path and line order.

        ``prefix`` is where the export lives in the repository, so that a
        finding names the file as the repository shows it.
        """
        findings: list[Finding] = []
        with _SETTINGS_LOCK, transient_settings(self._config):
            for rel in sorted(files):
                ref = items.item_of(rel)
                item = f"{ref.kind} {ref.path}" if ref else rel
                shown = f"{prefix}/{rel}" if prefix else rel
                if self._screen is not None and not _may_hold_a_secret(files[rel], self._screen):
                    continue
                for secret in scan_file(files[rel]):
                    findings.append(Finding(shown, secret.line_number, secret.type, item))
        findings.sort(key=lambda f: (f.file, f.line, f.detector))
        return findings


def _screen(detectors: tuple[str, ...]) -> list[re.Pattern[str]]:
    """The detectors' own regexes, one per set of flags, made to work on a whole file."""
    # detect-secrets ships no type hints: its classes are Any here.
    plugin_classes: list[Any] = list(get_mapping_from_secret_type_to_class().values())
    classes: dict[str, Any] = {c.__name__: c for c in plugin_classes}
    by_flags: dict[int, list[str]] = {}
    for name in detectors:
        for pattern in classes[name]().denylist:
            by_flags.setdefault(pattern.flags, []).append(pattern.pattern)
    # MULTILINE: a pattern anchored to a line's start or end still is.
    return [
        re.compile("|".join(f"(?:{p})" for p in patterns), flags | re.MULTILINE)
        for flags, patterns in by_flags.items()
    ]


def _may_hold_a_secret(path: str, screen: list[re.Pattern[str]]) -> bool:
    with open(path, "rb") as handle:
        text = handle.read().decode("utf-8", errors="replace")
    return any(pattern.search(text) for pattern in screen)
