"""``/ready``: can this process do a sync at all?

``/health`` only says the process is up (the contract's liveness probe).
Readiness checks the tools and the disk a sync needs (Git runs in-process:
there is no git binary to look for), and says which one is
missing: a container without the CLI should fail loudly, not at 3 a.m.
It also states Windmill's version beside the pinned CLI's, with a warning
when they are far apart; that is no reason to be unready.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time

from gitsync.config import Settings
from gitsync.windmill.version import ServerVersion

_CACHE_SECONDS = 15


class Readiness:
    def __init__(self, settings: Settings, versions: ServerVersion | None = None) -> None:
        self.settings = settings
        self.versions = versions
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._problems: list[str] = []

    def problems(self) -> list[str]:
        with self._lock:
            if time.monotonic() - self._checked_at > _CACHE_SECONDS:
                self._problems = self._check()
                self._checked_at = time.monotonic()
            return list(self._problems)

    def windmill(self) -> dict[str, object] | None:
        """Windmill's version beside the CLI's (cached; a short wait at most when stale)."""
        return None if self.versions is None else self.versions.current(timeout=2).to_dict()

    def _check(self) -> list[str]:
        s = self.settings
        problems = []
        if s.wmill_cli.suffix in (".js", ".mjs") and shutil.which(s.node_bin) is None:
            problems.append(f"node was not found ({s.node_bin})")
        if not s.wmill_cli.is_file():
            problems.append(f"the wmill CLI was not found ({s.wmill_cli})")
        try:
            s.data_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=s.data_dir, prefix=".ready-"):
                pass
        except OSError as exc:
            problems.append(f"DATA_DIR ({s.data_dir}) is not writable ({exc.strerror})")
        return problems
