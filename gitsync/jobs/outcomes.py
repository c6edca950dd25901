"""Where each run's outcome goes: its job row, its target's summary, metrics, a log line, an alert.

Kept apart from the runner's queue and lanes: what happens to a finished
run's record does not depend on how it was scheduled.

The job store lives on DATA_DIR, which can fill up or turn read-only (ext4
does on disk errors). A write that fails here is logged and kept, and tried
again before the next run: a record never stops an answer or a lane.
"""

from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time
from typing import Any

from gitsync.backup.job import SyncResult, success_message
from gitsync.errors import Refused, RequestError, SecretDetected, WindmillGitSyncError
from gitsync.jobs.run import Run
from gitsync.jobs.store import JobStore
from gitsync.jobs.tasks import Task
from gitsync.ops.alerts import AlertSender
from gitsync.ops.metrics import Metrics, target_label
from gitsync.secretscan.scan import HeldItem
from gitsync.version import CLI_VERSION

# What a job record keeps of the answer's coverage and versions (store.py reads them back).
RECORDED_COVERAGE_KEYS = ("not_backed_up", "scope_excludes", "skipped_by_policy", "windmill")
# The runner's name, as before this module was split from it: the JSON log's
# "logger" field of each sync's line is something log queries match on.
log = logging.getLogger("gitsync.sync.runner")

# Job-record writes kept for a retry while DATA_DIR cannot take them.
_MAX_UNWRITTEN = 1000


class RunOutcomes:
    """Records and reports each run as it starts and ends; shared by every run."""

    def __init__(self, store: JobStore, metrics: Metrics, alerts: AlertSender | None) -> None:
        self.store = store
        self.metrics = metrics
        self.alerts = alerts
        self._unwritten_lock = threading.Lock()
        self._unwritten: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=_MAX_UNWRITTEN
        )

    def write(self, job_id: str, **fields: Any) -> None:
        """Update a job record; if DATA_DIR refuses, log it and keep it for later."""
        try:
            self.store.update(job_id, **fields)
        except (sqlite3.Error, OSError) as exc:
            log.error(
                "job %s: its record was not written (%s); kept for a retry",
                job_id,
                exc,
                extra={"event": "job_store", "job_id": job_id},
            )
            with self._unwritten_lock:
                self._unwritten.append((job_id, fields))

    def write_unwritten(self) -> None:
        """Write the records DATA_DIR refused before, oldest first, while it takes them."""
        while True:
            with self._unwritten_lock:
                if not self._unwritten:
                    return
                job_id, fields = self._unwritten[0]
            try:
                self.store.update(job_id, **fields)
            except (sqlite3.Error, OSError):
                return  # still refused: the next run tries again
            with self._unwritten_lock:
                if self._unwritten and self._unwritten[0][0] == job_id:
                    self._unwritten.popleft()
            log.info("job %s: its record was written late", job_id, extra={"job_id": job_id})

    def progress(self, job_id: str, phase: str) -> None:
        # Best effort: a phase is a hint, and the outcome that follows replaces it.
        try:
            self.store.update(job_id, phase=phase)
        except (sqlite3.Error, OSError) as exc:
            log.warning("job %s: phase %s not recorded (%s)", job_id, phase, exc)

    def running(self, run: Run | Task) -> None:
        self.write(run.job_id, state="running", started_at=time.time())

    def task_succeeded(self, task: Task, result: object) -> None:
        log.info(
            "%s done",
            task.kind,
            extra={"event": task.kind, "outcome": "success", "job_id": task.job_id},
        )
        self.write(
            task.job_id,
            state="succeeded",
            finished_at=time.time(),
            phase="done",
            result_json=json.dumps({"result": task.describe(result)}),
        )

    def task_failed(self, task: Task, exc: WindmillGitSyncError | None) -> None:
        """A restore or history fetch failed; ``exc`` is None for an unforeseen error."""
        code = exc.code if exc is not None else "internal_error"
        message = exc.message if exc is not None else "Internal error; see the service log"
        refused = isinstance(exc, (Refused, RequestError))
        log.error(
            "%s %s: %s",
            task.kind,
            "refused" if refused else "failed",
            message,
            extra={
                "event": task.kind,
                "outcome": "refused" if refused else "error",
                "job_id": task.job_id,
                "error": code,
                "detail": exc.detail if exc is not None else None,
            },
        )
        self.write(
            task.job_id,
            state="refused" if refused else "failed",
            finished_at=time.time(),
            phase="done",
            error=code,
            message=message,
            result_json=json.dumps({"result": exc.facts() if exc is not None else {}}),
        )

    def failed(self, run: Run, exc: WindmillGitSyncError, seconds: float) -> None:
        self._report_failure(run, exc, seconds)
        self.write(
            run.job_id,
            finished_at=time.time(),
            phase="done",
            error=exc.code,
            state="refused" if isinstance(exc, Refused) else "failed",
            message=exc.message,
            attempts=exc.attempts,
            result_json=json.dumps(
                {"files": [], "secret_findings": exc.facts().get("secret_findings", [])}
            ),
        )

    def crashed(self, run: Run, seconds: float) -> None:
        """A failure the sync did not foresee; the runner has logged its traceback."""
        self._record(run, "error", seconds)
        self.write(
            run.job_id,
            state="failed",
            finished_at=time.time(),
            phase="done",
            error="internal_error",
            message="Internal error; see the service log",
        )

    def succeeded(self, run: Run, result: SyncResult) -> None:
        data = result.to_dict()
        held = result.all_held
        self.write(
            run.job_id,
            # Pushed, but not whole: never to be read as a clean success.
            state="partial" if held else "succeeded",
            finished_at=time.time(),
            phase="done",
            **({"error": "secrets_held", "message": success_message(result)} if held else {}),
            changed=int(result.changed),
            commit_id=result.commit,
            added=data["added"],
            modified=data["modified"],
            deleted=data["deleted"],
            attempts=result.push_attempts,
            result_json=json.dumps(
                {
                    "files": data["files"],
                    "secret_findings": data.get("secret_findings", []),
                    "held_items": [h.to_dict() for h in held],
                    "pull": result.pull,
                    "pull_reason": result.pull_reason,
                    **{k: data[k] for k in RECORDED_COVERAGE_KEYS if k in data},
                }
            ),
        )
        self._report_success(run, result, data)
        self._report_coverage(run, result)
        self._complete_owed(run)

    @staticmethod
    def _label(run: Run) -> str:
        job = run.job
        return target_label(job.workspace, job.remote_url, job.branch, job.path_prefix)

    def _record(
        self,
        run: Run,
        outcome: str,
        seconds: float,
        held: list[dict[str, Any]] | None = None,
        **counts: int,
    ) -> list[dict[str, Any]]:
        """Fold the run into its target's summary and the metrics; return what was held before."""
        # The store's summary first: it is what the gauges restart from.
        at = time.time()
        job = run.job
        before: list[dict[str, Any]] = []
        try:
            before = self.store.target_summaries.record(
                run.key,
                label=self._label(run),
                workspace=job.workspace,
                remote=job.remote_url,
                branch=job.branch,
                outcome=outcome,
                at=at,
                held=held,
            )
        except (sqlite3.Error, OSError) as exc:
            # The gauges below still move; only a restart would start from the older summary.
            log.error(
                "the target's summary was not written (%s)", exc, extra={"job_id": run.job_id}
            )
        self.metrics.record(self._label(run), outcome, seconds, at=at, **counts)
        if held is not None:
            self.metrics.held_items.labels(self._label(run)).set(len(held))
        return before

    def _report_success(self, run: Run, result: SyncResult, data: dict[str, object]) -> None:
        held = result.all_held
        outcome = "partial" if held else "success" if result.changed else "noop"
        if held:
            self.metrics.secret_findings.labels(self._label(run), "held").inc(
                sum(len(h.findings) for h in held)
            )
        elif result.secret_findings:
            self.metrics.secret_findings.labels(self._label(run), "pushed").inc(
                len(result.secret_findings)
            )
        held_before = self._record(
            run,
            outcome,
            result.duration_seconds,
            [h.to_dict() for h in held],
            added=result.count("added"),
            modified=result.count("modified"),
            deleted=result.count("deleted"),
            commits=len(result.commits),
        )
        # One rich line per sync (JSON when stdout is not a terminal).
        log.info(
            "sync %s",
            outcome,
            extra={
                "event": "sync",
                "outcome": outcome,
                "job_id": run.job_id,
                "target": self._label(run),
                "duration_seconds": data["duration_seconds"],
                "commit": result.commit,
                "added": data["added"],
                "modified": data["modified"],
                "deleted": data["deleted"],
                "commits": len(result.commits),
                "held_items": [h.to_dict() for h in held],
            },
        )
        self._alert_held(run, held, held_before)

    def _report_coverage(self, run: Run, result: SyncResult) -> None:
        """The gauge, the target's summary, and an alert when a gap appears or grows."""
        coverage = result.overall_coverage()
        if coverage is None:
            return  # not known (no archive recorded): what was last known stands
        label = self._label(run)
        self.metrics.record_coverage(label, len(coverage.not_backed_up))
        summaries = self.store.target_summaries
        summaries.note_coverage(run.key, coverage)
        gaps = {g.describe() for g in coverage.not_backed_up}
        if gaps:
            log.warning(
                "the backup leaves out %d item(s) Windmill has",
                len(gaps),
                extra={
                    "event": "not_backed_up",
                    "job_id": run.job_id,
                    "target": label,
                    "not_backed_up": [g.to_dict() for g in coverage.not_backed_up],
                },
            )
        if self.alerts is None:
            return
        told = summaries.gaps_alerted(run.key)
        if gaps <= told:
            if told - gaps:
                # A closed gap that opens again is news again.
                summaries.note_gaps_alerted(run.key, told & gaps)
            return
        job = run.job
        listed = ", ".join(sorted(gaps)[:20]) + (", ..." if len(gaps) > 20 else "")
        if self.alerts.send(
            {
                "event": "backup_incomplete",
                "workspace": job.workspace,
                "remote": job.remote_url,
                "branch": job.branch,
                "job_id": run.job_id,
                "not_backed_up": [g.to_dict() for g in coverage.not_backed_up],
                "new": sorted(gaps - told),
                "message": f"Backup of workspace '{job.workspace}' to {job.remote_url} "
                f"({job.branch}) leaves out {len(gaps)} item(s) Windmill has: {listed}. "
                f"The pinned wmill CLI {CLI_VERSION} does not write them; upgrade the image "
                "to a newer CLI.",
            }
        ):
            summaries.note_gaps_alerted(run.key, gaps)

    def _report_failure(self, run: Run, exc: WindmillGitSyncError, seconds: float) -> None:
        outcome = "refused" if isinstance(exc, Refused) else "error"
        self._record(run, outcome, seconds)
        if isinstance(exc, SecretDetected):
            found = len(exc.findings)
            self.metrics.secret_findings.labels(self._label(run), "blocked").inc(found)
        log.error(
            "sync %s: %s",
            outcome,
            exc.message,
            extra={
                "event": "sync",
                "outcome": outcome,
                "job_id": run.job_id,
                "target": self._label(run),
                "duration_seconds": round(seconds, 3),
                "error": exc.code,
                "attempts": exc.attempts,
                "detail": exc.detail,
            },
        )

    def alert_failure(self, run: Run, exc: WindmillGitSyncError) -> None:
        """POST the failure to ALERT_WEBHOOK_URL (up to its timeout): after the caller's answer."""
        if self.alerts is not None:
            job = run.job
            self.alerts.send(
                {
                    "event": "sync_failed",
                    "workspace": job.workspace,
                    "remote": job.remote_url,
                    "branch": job.branch,
                    "job_id": run.job_id,
                    "error": exc.code,
                    "message": f"Backup of workspace '{job.workspace}' to {job.remote_url} "
                    f"({job.branch}) failed: {exc.message}",
                }
            )

    def _alert_held(
        self, run: Run, held: tuple[HeldItem, ...], before: list[dict[str, Any]]
    ) -> None:
        """Alert when an item is newly held, not on every sync that still holds it."""
        if self.alerts is None or not {h.item for h in held} - {b.get("item") for b in before}:
            return
        job = run.job
        self.alerts.send(
            {
                "event": "items_held",
                "workspace": job.workspace,
                "remote": job.remote_url,
                "branch": job.branch,
                "job_id": run.job_id,
                "held_items": [h.to_dict() for h in held],
                "message": f"Backup of workspace '{job.workspace}' to {job.remote_url} "
                f"({job.branch}) holds back {len(held)} item(s) with possible secrets: "
                + "; ".join(h.describe() for h in held),
            }
        )

    def _complete_owed(self, run: Run) -> None:
        # Jobs of this target cut off by a shutdown or a crash are done now:
        # this run pulled the whole workspace after they were accepted.
        try:
            completed = self.store.complete_interrupted(run.key, run.job_id)
        except (sqlite3.Error, OSError) as exc:
            log.error("owed jobs were not marked completed (%s)", exc)
            return
        if completed:
            log.info(
                "owed run completed: %d interrupted job(s) of this target",
                len(completed),
                extra={
                    "event": "owed_run_completed",
                    "job_id": run.job_id,
                    "target": self._label(run),
                    "completed_jobs": completed,
                },
            )
