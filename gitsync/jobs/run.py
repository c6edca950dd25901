"""An accepted sync: what the runner queues, and what its callers wait on."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from gitsync.backup.job import SyncJob, SyncResult


@dataclass(eq=False)
class Run:
    """An accepted sync: its job id, its target, and the future its callers wait on."""

    job_id: str
    key: str
    fingerprint: str
    job: SyncJob
    future: Future[SyncResult] = field(default_factory=Future)
    started: bool = False
