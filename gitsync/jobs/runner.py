"""Running syncs: a bounded queue, per-target lanes, coalescing, a job record each.

Windmill can fire many syncs in a few seconds (one per deploy). Requests for
a target run one at a time in that target's lane; a request identical to
one already waiting in the lane joins it instead of queueing another run,
so every caller still gets the result of a run that started after its
request arrived. Different targets run in parallel up to
MAX_CONCURRENT_SYNCS; beyond MAX_QUEUED_SYNCS waiting runs, callers are told
to come back later (503 with Retry-After). Restores and history fetches
(``tasks``) queue in their target's lane too, so they never overlap its syncs.

A run's caller is answered first, in a ``finally``; its records and alert come
after, guarded: a full or read-only DATA_DIR never strands a caller or a lane.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gitsync.backup.job import SyncJob
from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.errors import Busy, ShuttingDown, WindmillGitSyncError
from gitsync.jobs.outcomes import RunOutcomes
from gitsync.jobs.run import Run
from gitsync.jobs.store import JobStore
from gitsync.jobs.tasks import Task
from gitsync.ops.alerts import AlertSender
from gitsync.ops.metrics import Metrics

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30


@dataclass
class _Lane:
    current: Run | Task | None = None  # submitted to the pool (maybe not started yet)
    waiting: list[Run | Task] = field(default_factory=list)


@dataclass(frozen=True)
class _Outcome:
    settle: Callable[[], None]  # answers the callers
    record: Callable[[], None]  # the job record, summary, metrics, log line
    notify: Callable[[], None] | None = None  # the failure alert


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
            self._check_accepting()
            lane = self._lanes.get(key, _Lane())
            for queued in [lane.current, *lane.waiting]:
                if (
                    isinstance(queued, Run)
                    and not queued.started
                    and queued.fingerprint == fingerprint
                ):
                    joined = queued
                    break
            else:
                joined = None
                self._reserve_slot()
        if joined is not None:
            # Outside the lock: a slow disk delays this caller, not every other one.
            self.store.add_request(joined.job_id)
            return Ticket(joined, coalesced=True)
        run = Run(uuid.uuid4().hex, key, fingerprint, job)
        self._record_accepted(run.job_id, key, "sync", job.workspace, job.remote_url, job.branch)
        self._enqueue(run)
        return Ticket(run, coalesced=False)

    def submit_task(
        self,
        kind: str,
        key: str,
        *,
        workspace: str,
        remote: str,
        branch: str,
        work: Callable[[], Any],
        describe: Callable[[Any], dict[str, object]] | None = None,
    ) -> Task:
        """Queue a restore or history fetch in the lane of the target it touches."""
        with self._lock:
            self._check_accepting()
            self._reserve_slot()
        task = Task(uuid.uuid4().hex, key, kind, workspace, remote, branch, work)
        if describe is not None:
            task.describe = describe
        self._record_accepted(task.job_id, key, kind, workspace, remote, branch)
        self._enqueue(task)
        return task

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise ShuttingDown("The service is shutting down; retry shortly", RETRY_AFTER_SECONDS)

    def _reserve_slot(self) -> None:
        # Under self._lock. The slot is taken before the job is written down, so
        # the bound holds while the store is written outside the lock.
        if self._not_started >= self.settings.max_queued_syncs:
            raise Busy(
                f"Too many syncs waiting ({self._not_started}); retry in {RETRY_AFTER_SECONDS} s",
                RETRY_AFTER_SECONDS,
            )
        self._not_started += 1
        self.metrics.queue_depth.set(self._not_started)

    def _record_accepted(
        self, job_id: str, key: str, kind: str, workspace: str, remote: str, branch: str
    ) -> None:
        try:
            self.store.create(
                job_id, target=key, workspace=workspace, remote=remote, branch=branch, kind=kind
            )
        except BaseException:
            with self._lock:
                self._not_started -= 1
                self.metrics.queue_depth.set(self._not_started)
            raise

    def _enqueue(self, run: Run | Task) -> None:
        with self._lock:
            if self._closing:  # a shutdown began while the job was written down
                self._not_started -= 1
                self.outcomes.write(
                    run.job_id, state="interrupted", error="shutting_down", finished_at=time.time()
                )
                self._check_accepting()
            lane = self._lanes.setdefault(run.key, _Lane())
            if lane.current is None:
                lane.current = run
                self._start(run)
            else:
                lane.waiting.append(run)

    def _start(self, run: Run | Task) -> None:
        # Under self._lock. An exception in the pool's thread would stay in a
        # future nobody reads: it is logged instead.
        self._pool.submit(self._execute, run).add_done_callback(_log_lost_exception)

    def _execute(self, run: Run | Task) -> None:
        with self._lock:
            if run.future.done():  # cancelled by shutdown()
                return
            run.started = True
            self._not_started -= 1
            self._in_flight += 1
            self.metrics.queue_depth.set(self._not_started)
            self.metrics.in_flight.set(self._in_flight)
        outcome: _Outcome | None = None
        try:
            outcome = self._run(run)
            # Before the answer, so a caller reading GET /jobs/<id> next sees it;
            # guarded, and the store's own writes are (outcomes.write).
            _guarded(outcome.record, run, "recording its outcome")
        finally:
            with self._lock:
                self._in_flight -= 1
                self.metrics.in_flight.set(self._in_flight)
            if outcome is not None:
                outcome.settle()
            elif not run.future.done():  # unreachable unless _run itself broke
                run.future.set_exception(WindmillGitSyncError("Internal error; see the log"))
            try:
                if outcome is not None and outcome.notify is not None:
                    # A webhook of up to 10 s: after the answer, never instead of it.
                    _guarded(outcome.notify, run, "sending its alert")
            finally:
                if isinstance(run, Run):
                    after = functools.partial(self.service.after_answer, run.job)
                    _guarded(after, run, "work after its answer")
                # dulwich's objects form reference cycles: without a collection
                # after each job the process settles near twice its working
                # size (docs: dulwich.md 7). After the answer, which a full
                # collection of a large heap would hold back by 30-40 ms.
                gc.collect()
                self._next_in_lane(run)

    def _run(self, run: Run | Task) -> _Outcome:
        """Run the job; return how to answer its callers and record it. Never raises."""
        started = time.monotonic()
        try:
            self.outcomes.write_unwritten()
            self.outcomes.running(run)
            if isinstance(run, Task):
                value = run.work()
            else:
                result = self.service.sync(
                    run.job, progress=lambda phase: self.outcomes.progress(run.job_id, phase)
                )
        except WindmillGitSyncError as exc:
            exc.job_id = run.job_id
            seconds = time.monotonic() - started
            settle = functools.partial(run.future.set_exception, exc)
            if isinstance(run, Task):
                return _Outcome(settle, functools.partial(self.outcomes.task_failed, run, exc))
            return _Outcome(
                settle,
                functools.partial(self.outcomes.failed, run, exc, seconds),
                functools.partial(self.outcomes.alert_failure, run, exc),
            )
        except BaseException as exc:
            # The outermost job boundary: log the traceback, record a failure.
            log.exception("%s job %s crashed", _kind(run), run.job_id)
            seconds = time.monotonic() - started
            settle = functools.partial(run.future.set_exception, exc)
            if isinstance(run, Task):
                return _Outcome(settle, functools.partial(self.outcomes.task_failed, run, None))
            return _Outcome(settle, functools.partial(self.outcomes.crashed, run, seconds))
        if isinstance(run, Task):
            return _Outcome(
                functools.partial(run.future.set_result, value),
                functools.partial(self.outcomes.task_succeeded, run, value),
            )
        return _Outcome(
            functools.partial(run.future.set_result, result),
            functools.partial(self.outcomes.succeeded, run, result),
        )

    def _next_in_lane(self, finished: Run | Task) -> None:
        with self._lock:
            lane = self._lanes[finished.key]
            lane.current = lane.waiting.pop(0) if lane.waiting else None
            if lane.current is None:
                del self._lanes[finished.key]
            elif not self._closing:
                self._start(lane.current)

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
                kind = _kind(run)
                self.outcomes.write(
                    run.job_id,
                    state="interrupted",
                    finished_at=now,
                    interrupted_at=now,
                    error="shutting_down",
                    message=f"The service stopped before this {kind} "
                    f"{'finished' if run.started else 'started'} ({reason}); "
                    + (
                        "the next sync of this target completes it"
                        if kind == "sync"
                        else "repeat it"
                    ),
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


def _kind(run: Run | Task) -> str:
    return run.kind if isinstance(run, Task) else "sync"


def _log_lost_exception(future: Future[None]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error("a runner thread failed", exc_info=exc)


def _guarded(step: Callable[[], None], run: Run | Task, what: str) -> None:
    try:
        step()
    except Exception:
        # Bookkeeping never takes the answer or the lane down with it.
        log.exception("job %s: %s failed", run.job_id, what)
