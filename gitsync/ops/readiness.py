"""``/ready``: can this process do a sync at all?

``/health`` only says the process is up (the contract's liveness probe).
Readiness checks the tools and the disk a sync needs, and says which one is
missing: a container without the CLI should fail loudly, not at 3 a.m.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from gitsync.config import Settings
from gitsync.errors import SyncError
from gitsync.secrets import NO_SECRETS
from gitsync.windmill.process import run

# git_config's transfer.credentialsInUrl and GIT_CONFIG_GLOBAL need >= 2.37.
MIN_GIT = (2, 37)
_CACHE_SECONDS = 15


class Readiness:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._problems: list[str] = []

    def problems(self) -> list[str]:
        with self._lock:
            if time.monotonic() - self._checked_at > _CACHE_SECONDS:
                self._problems = self._check()
                self._checked_at = time.monotonic()
            return list(self._problems)

    def _check(self) -> list[str]:
        s = self.settings
        problems = []
        if shutil.which(s.git_bin) is None:
            problems.append(f"git was not found ({s.git_bin})")
        else:
            version = _git_version(s)
            if version is None:
                problems.append("git --version could not be run")
            elif version < MIN_GIT:
                problems.append(
                    f"git {'.'.join(map(str, version))} is too old "
                    f"(need {'.'.join(map(str, MIN_GIT))} or newer)"
                )
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


def _git_version(settings: Settings) -> tuple[int, int] | None:
    try:
        out = run(
            [settings.git_bin, "--version"],
            step="git --version",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"},
            cwd=Path("/"),
            timeout=10,
            redactor=NO_SECRETS,
        ).stdout
    except (SyncError, OSError):
        return None
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None
