"""A whole-sync deadline that every step draws its own timeout from."""

from __future__ import annotations

import time

from gitsync.errors import SyncTimeout


class Deadline:
    def __init__(self, seconds: float, *, what: str = "the sync") -> None:
        self.seconds = seconds
        self.what = what
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._end - time.monotonic()

    def for_command(self, cap: float) -> float:
        """Timeout for one child process: its own cap, or what is left of the sync."""
        left = self.remaining()
        if left <= 0:
            raise SyncTimeout(self.what, self.seconds)
        return min(cap, left)
