"""``/ready``: can this process do a sync at all?

``/health`` only says the process is up (the contract's liveness probe).
Readiness checks the tools and the disk a sync needs (Git runs in-process:
there is no git binary to look for), and says which one is
missing: a container without the CLI should fail loudly, not at 3 a.m.
It also states Windmill's version beside the pinned CLI's, with a warning
when they are far apart; that is no reason to be unready.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time

from gitsync.config import Settings
from gitsync.windmill.process import file_size_limit_problem
from gitsync.windmill.version import ServerVersion

# The tools do not come and go; the disk does, so it is checked on every call.
_CACHE_SECONDS = 15
# What a write probe writes: a full disk refuses data, not always an empty file.
_PROBE_BYTES = 4096


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
                self._problems = self._check_tools()
                self._checked_at = time.monotonic()
            return [*self._problems, *self._check_data_dir()]

    def windmill(self) -> dict[str, object] | None:
        """Windmill's version beside the CLI's (cached; a short wait at most when stale)."""
        return None if self.versions is None else self.versions.current(timeout=2).to_dict()

    def limits(self) -> dict[str, object]:
        """The limits the operator set, and whether each is in force."""
        s = self.settings
        if not s.max_file_bytes:
            return {"max_file_bytes": {"configured": None, "enforced": False}}
        problem = file_size_limit_problem(s.max_file_bytes)
        found: dict[str, object] = {"configured": s.max_file_bytes, "enforced": problem is None}
        if problem is not None:
            found["problem"] = problem
        return {"max_file_bytes": found}

    def _check_tools(self) -> list[str]:
        s = self.settings
        problems = []
        if s.wmill_cli.suffix in (".js", ".mjs") and shutil.which(s.node_bin) is None:
            problems.append(f"node was not found ({s.node_bin})")
        if not s.wmill_cli.is_file():
            problems.append(f"the wmill CLI was not found ({s.wmill_cli})")
        return problems

    def _check_data_dir(self) -> list[str]:
        s = self.settings
        probe = s.data_dir / f".ready-{os.getpid()}-{threading.get_ident()}"
        try:
            s.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0" * _PROBE_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            what = "is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "is not writable"
            return [f"DATA_DIR ({s.data_dir}) {what} ({exc.strerror}): syncs cannot run"]
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
        free = shutil.disk_usage(s.data_dir).free
        if free < s.min_free_bytes:
            return [
                f"DATA_DIR ({s.data_dir}) is nearly full: {free} bytes free, syncs need "
                f"MIN_FREE_BYTES ({s.min_free_bytes})"
            ]
        return []
