"""Running syncs: a bounded queue, per-target lanes, coalescing, a job record each.

Windmill can fire many syncs in a few seconds (one per deploy). Requests for
a target run one at a time in that target's lane; a request identical to
one already waiting in the lane joins it instead of queueing another run,
so every caller still gets the result of a run that started after its
request arrived. Different targets run in parallel up to
MAX_CONCURRENT_SYNCS; beyond MAX_QUEUED_SYNCS waiting runs, callers are told
to come back later (503 with Retry-After).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gitsync.backup.job import SyncJob
from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.errors import Busy, ShuttingDown, WindmillGitSyncError
from gitsync.jobs.outcomes import RunOutcomes
from gitsync.jobs.run import Run
from gitsync.jobs.store import JobStore
from gitsync.ops.alerts import AlertSender
from gitsync.ops.metrics import Metrics

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30


@dataclass
class _Lane:
    current: Run | None = None  # submitted to the pool (maybe not started yet)
    waiting: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Ticket:
    run: Run
    coalesced: bool

    @property
    def job_id(self) -> str:
        return self.run.job_id


class SyncRunner:
    def __init__(
        self,
        service: SyncService,
        store: JobStore,
        settings: Settings,
        metrics: Metrics | None = None,
        alerts: AlertSender | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.alerts = alerts
        self.outcomes = RunOutcomes(store, self.metrics, alerts)
        service.on_retry = lambda step: self.metrics.retries.labels(step).inc()
        self._pool = ThreadPoolExecutor(settings.max_concurrent_syncs, thread_name_prefix="sync")
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._not_started = 0
        self._in_flight = 0
        self._accepting = True
        self._closing = False

    @property
    def queue_depth(self) -> int:
        return self._not_started

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, job: SyncJob) -> Ticket:
        key = self.service.key_for(job)
        fingerprint = job.fingerprint()
        with self._lock:
            if not self._accepting:
                raise ShuttingDown(
                    "The service is shutting down; retry shortly", RETRY_AFTER_SECONDS
                )
            lane = self._lanes.setdefault(key, _Lane())
            for run in [lane.current, *lane.waiting]:
                if run is not None and not run.started and run.fingerprint == fingerprint:
                    self.store.add_request(run.job_id)
                    return Ticket(run, coalesced=True)
            if self._not_started >= self.settings.max_queued_syncs:
                raise Busy(
                    f"Too many syncs waiting ({self._not_started}); retry in "
                    f"{RETRY_AFTER_SECONDS} s",
                    RETRY_AFTER_SECONDS,
                )
            run = Run(uuid.uuid4().hex, key, fingerprint, job)
            self.store.create(
                run.job_id,
                target=key,
                workspace=job.workspace,
                remote=job.remote_url,
                branch=job.branch,
            )
            self._not_started += 1
            self.metrics.queue_depth.set(self._not_started)
            if lane.current is None:
                lane.current = run
                self._pool.submit(self._execute, run)
            else:
                lane.waiting.append(run)
            return Ticket(run, coalesced=False)

    def _execute(self, run: Run) -> None:
        with self._lock:
            if run.future.done():  # cancelled by shutdown()
                return
            run.started = True
            self._not_started -= 1
            self._in_flight += 1
            self.metrics.queue_depth.set(self._not_started)
            self.metrics.in_flight.set(self._in_flight)
        started = time.monotonic()
        self.outcomes.running(run)
        try:
            result = self.service.sync(
                run.job, progress=lambda phase: self.store.update(run.job_id, phase=phase)
            )
        except WindmillGitSyncError as exc:
            exc.job_id = run.job_id  # type: ignore[attr-defined]
            self.outcomes.failed(run, exc, time.monotonic() - started)
            run.future.set_exception(exc)
        except BaseException as exc:
            # The outermost job boundary: log the traceback, record a failure.
            log.exception("sync job %s crashed", run.job_id)
            self.outcomes.crashed(run, time.monotonic() - started)
            run.future.set_exception(exc)
        else:
            self.outcomes.succeeded(run, result)
            run.future.set_result(result)
        finally:
            self._next_in_lane(run)

    def _next_in_lane(self, finished: Run) -> None:
        with self._lock:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)
            lane = self._lanes[finished.key]
            lane.current = lane.waiting.pop(0) if lane.waiting else None
            if lane.current is None:
                del self._lanes[finished.key]
            elif not self._closing:
                self._pool.submit(self._execute, lane.current)

    @property
    def idle(self) -> bool:
        """Nothing accepted is running or waiting."""
        with self._lock:
            return not self._lanes

    def unfinished(self) -> list[str]:
        with self._lock:
            return [
                run.job_id
                for lane in self._lanes.values()
                for run in [lane.current, *lane.waiting]
                if run is not None
            ]

    def stop_accepting(self) -> None:
        """New syncs get 503 ``shutting_down``; accepted ones (running or waiting) go on."""
        with self._lock:
            self._accepting = False

    def interrupt_unfinished(self, reason: str) -> list[str]:
        """Record every accepted job that has not finished as interrupted; return their ids.

        Waiting jobs never start; their callers get 503 ``shutting_down``.
        Running ones are cut off when the process exits. Either way the job
        store says so, and the next sync of the target completes them (the
        tokens a re-run would need were never written down).
        """
        now = time.time()
        with self._lock:
            self._accepting = False
            self._closing = True
            runs = [
                r
                for lane in self._lanes.values()
                for r in [lane.current, *lane.waiting]
                if r is not None and not r.future.done()
            ]
            for run in runs:
                self.store.update(
                    run.job_id,
                    state="interrupted",
                    finished_at=now,
                    interrupted_at=now,
                    error="shutting_down",
                    message=f"The service stopped before this sync "
                    f"{'finished' if run.started else 'started'} ({reason}); "
                    "the next sync of this target completes it",
                )
                if not run.started:
                    self._not_started -= 1
                    run.future.set_exception(
                        ShuttingDown(
                            "The service is shutting down; retry shortly", RETRY_AFTER_SECONDS
                        )
                    )
        self._pool.shutdown(wait=False, cancel_futures=True)
        return [run.job_id for run in runs]

    def close(self) -> None:
        """After a clean drain: nothing is left to run."""
        with self._lock:
            self._accepting = False
            self._closing = True
        self._pool.shutdown(wait=True, cancel_futures=True)
