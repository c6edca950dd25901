"""Restores and history fetches, run by the runner in their target's lane like a sync.

A restore writes into a workspace and a history fetch writes into the
target's copy of the repository: either would race a sync of the same
target. So they queue in the same lane, take the same lock (the one
``TargetLocks`` of the service, under ``job.target_key``), leave a job
record, and are waited for by a drain like any sync.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

# What a task's job record says it was (the jobs table's ``kind``).
RESTORE = "restore"
HISTORY = "history"


@dataclass(eq=False)
class Task:
    """An accepted restore or history fetch: its job id, its target's key, its work."""

    job_id: str
    key: str
    kind: str
    workspace: str
    remote: str
    branch: str
    work: Callable[[], Any]
    # For the job record's ``result`` (a restore's changes); never secrets.
    describe: Callable[[Any], dict[str, object]] = field(default=lambda _result: {})
    future: Future[Any] = field(default_factory=Future)
    started: bool = False
    # Never shared with another request: each restore is its own.
    fingerprint: str = ""
