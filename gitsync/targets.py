"""Targets: the key that names one (a workspace, a remote, a branch, a prefix), and their locks.

One sync, restore or history deepening at a time per target, across threads
and processes.

A thread lock serialises requests inside this process; an ``flock`` on a file
in DATA_DIR does the same across processes sharing the volume, and the
kernel releases it when a process dies, so a crash never leaves a target
locked.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gitsync.deadline import Deadline
from gitsync.errors import SyncTimeout


class TargetLocks:
    def __init__(self, lock_dir: Path) -> None:
        self._dir = lock_dir
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def _thread_lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextmanager
    def hold(self, key: str, deadline: Deadline) -> Iterator[None]:
        lock = self._thread_lock(key)
        if not lock.acquire(timeout=max(deadline.remaining(), 0.001)):
            raise SyncTimeout("waiting for another sync of the same target", deadline.seconds)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if deadline.remaining() <= 0:
                            raise SyncTimeout(
                                "waiting for another sync of the same target", deadline.seconds
                            ) from None
                        time.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the flock
        finally:
            lock.release()


def target_key(
    windmill_base_url: str, workspace: str, remote_url: str, branch: str, path_prefix: str = ""
) -> str:
    material = "\n".join((windmill_base_url, workspace, remote_url, branch))
    if path_prefix:
        material += "\n" + path_prefix
    return hashlib.sha256(material.encode()).hexdigest()[:24]
