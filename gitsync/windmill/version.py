"""Windmill's version beside the pinned CLI's: how far apart they are, said where people look.

Windmill is upgraded on its own schedule; the image pins windmill-cli. A
server far ahead of the CLI exports kinds of items the CLI does not know
(coverage.py finds them one by one; this says why to expect them). The
version comes from ``GET /api/version``, which needs no token, and is cached:
a sync with nothing new must not pay a round trip for it, so it is asked at
most every few minutes (sooner after a failure, but not on every call).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gitsync.version import CLI_VERSION
from gitsync.windmill.api import windmill_opener

log = logging.getLogger(__name__)

# Seconds a known version, and a failure to learn it, are trusted.
FRESH_SECONDS = 300.0
RETRY_SECONDS = 60.0
_VERSION = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse(text: str) -> tuple[int, int, int] | None:
    """``(1, 950, 0)`` for Windmill's ``CE v1.950.0`` (or ``EE v1.950.0-12-gabc``)."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


@dataclass(frozen=True)
class Versions:
    """The server's version (None: not known) beside the CLI's, and a warning if too far apart."""

    server: str | None
    cli: str = CLI_VERSION
    warning: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "server_version": self.server,
            "cli_version": self.cli,
            **({"warning": self.warning} if self.warning else {}),
        }


def compare(server_text: str | None, max_minor_skew: int, cli: str = CLI_VERSION) -> Versions:
    server = parse(server_text) if server_text is not None else None
    ours = parse(cli)
    if server is None or ours is None:
        return Versions(None, cli)
    shown = ".".join(map(str, server))
    if server[0] > ours[0]:
        ahead = "a major release"
    elif server[0] == ours[0] and server[1] - ours[1] > max_minor_skew:
        ahead = f"{server[1] - ours[1]} minor releases"
    else:
        return Versions(shown, cli)
    return Versions(
        shown,
        cli,
        f"Windmill {shown} is {ahead} ahead of the pinned wmill CLI {cli} (more than "
        f"{max_minor_skew} minor releases): items of kinds the CLI does not know are not "
        "backed up; upgrade the image to a newer CLI",
    )


class ServerVersion:
    """Windmill's version, fetched without a token and cached (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        extra_ca: Path | None,
        max_minor_skew: int,
        fresh_seconds: float = FRESH_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.url = base_url.rstrip("/") + "/api/version"
        self.max_minor_skew = max_minor_skew
        self.fresh_seconds = fresh_seconds
        self.retry_seconds = retry_seconds
        self._opener = windmill_opener(extra_ca)
        self._lock = threading.Lock()
        self._text: str | None = None
        self._valid_until = 0.0

    def current(self, timeout: float = 5.0) -> Versions:
        """The cached comparison, refreshed first if stale (one request, ``timeout`` at most)."""
        with self._lock:
            if time.monotonic() >= self._valid_until:
                text = self._fetch(timeout)
                if text is not None:
                    self._text = text
                    self._valid_until = time.monotonic() + self.fresh_seconds
                else:
                    # Keep what was known; ask again a little later, not on every call.
                    self._valid_until = time.monotonic() + self.retry_seconds
            text = self._text
        return compare(text, self.max_minor_skew)

    def _fetch(self, timeout: float) -> str | None:
        request = urllib.request.Request(  # noqa: S310 - http(s) base URL, checked in config
            self.url, headers={"User-Agent": "windmill-git-sync"}
        )
        try:
            with self._opener.open(request, timeout=timeout) as response:
                text = bytes(response.read(200)).decode("utf-8", "replace").strip()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.info("Windmill's version could not be read (%s)", type(exc).__name__)
            return None
        if parse(text) is None:
            log.info("Windmill's version answer is not a version: %r", text[:80])
            return None
        return text
