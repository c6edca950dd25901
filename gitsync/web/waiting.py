"""How long a request thread may wait for a job, and how many may wait at once.

Each caller waiting for its sync, restore or history fetch holds one of
waitress's threads. A burst of webhooks (all coalesced onto one queued run,
so MAX_QUEUED_SYNCS does not stop them) could take every thread and leave
none for ``/health`` and ``/ready``. So a few threads are kept for the
probes, and a caller beyond the waiters' limit, or still waiting after
SYNC_TIMEOUT (and a short grace), is answered 202 with the job's id to poll (``GET /jobs/<id>``),
the answer ``"wait": false`` gets at once.
"""

from __future__ import annotations

import concurrent.futures
import threading
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")

# Threads no waiting caller may take: the probes and reads always find one.
PROBE_THREADS = 4
# Beyond SYNC_TIMEOUT: a job that ends at its own deadline still answers its
# caller, after the moment its teardown takes (connections cut, the CLI's
# process group killed, the outcome recorded).
GRACE_SECONDS = 15.0


class NotWaited(Exception):
    """The caller is answered 202: no thread to spare, or the job is still running."""


class Waiters:
    def __init__(self, server_threads: int, sync_timeout: float) -> None:
        # With very few threads (HTTP_THREADS=1), one caller may still wait.
        self.limit = max(server_threads - PROBE_THREADS, min(server_threads, 1))
        self.max_wait = sync_timeout + GRACE_SECONDS
        self._slots = threading.BoundedSemaphore(self.limit)

    def result(self, future: Future[T]) -> T:
        """The job's result (or its exception); :class:`NotWaited` to answer 202 instead."""
        if future.done():
            return future.result()
        if not self._slots.acquire(blocking=False):
            raise NotWaited
        try:
            # wait(), not result(timeout=): a job may itself fail with a TimeoutError.
            concurrent.futures.wait([future], timeout=self.max_wait)
        finally:
            self._slots.release()
        if not future.done():
            raise NotWaited
        return future.result()
