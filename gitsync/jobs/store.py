"""The job history: one row per sync run, in SQLite under DATA_DIR.

One connection, one writer (a lock around every statement), short
transactions; the schema is created idempotently at start-up. Rows hold no
secret: error messages are already redacted when they get here.

Beside the jobs, which are pruned to JOB_HISTORY, one summary row per target
keeps what monitoring needs across pruning and restarts (``summaries``: the
same database, connection and lock).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from gitsync.errors import JobStoreUnavailable
from gitsync.jobs.summaries import TargetSummaries, TargetSummary

log = logging.getLogger(__name__)

# A failed write's answer: come back when the operator has made room.
STORE_RETRY_AFTER_SECONDS = 30

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    target        TEXT NOT NULL,
    workspace     TEXT NOT NULL,
    remote        TEXT NOT NULL,
    branch        TEXT NOT NULL,
    -- queued | running | succeeded | partial | failed | refused | interrupted
    state         TEXT NOT NULL,
    phase         TEXT,
    requests      INTEGER NOT NULL DEFAULT 1,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    changed       INTEGER,
    commit_id     TEXT,
    added         INTEGER,
    modified      INTEGER,
    deleted       INTEGER,
    attempts      INTEGER,
    error         TEXT,
    message       TEXT,
    result_json   TEXT,
    -- when a shutdown or a crash cut the job off, and the job that later did its work
    interrupted_at REAL,
    completed_by  TEXT,
    -- sync | restore | history (a history fetch); only syncs are owed or summarised
    kind          TEXT NOT NULL DEFAULT 'sync'
);
CREATE INDEX IF NOT EXISTS jobs_workspace ON jobs (workspace, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""

ACTIVE_STATES = ("queued", "running")
_COLUMNS = (
    "id",
    "target",
    "workspace",
    "remote",
    "branch",
    "state",
    "phase",
    "requests",
    "created_at",
    "started_at",
    "finished_at",
    "changed",
    "commit_id",
    "added",
    "modified",
    "deleted",
    "attempts",
    "error",
    "message",
    "result_json",
    "interrupted_at",
    "completed_by",
    "kind",
)
# Columns added after the first release: added to an older database at start-up.
_ADDED_COLUMNS = {
    "interrupted_at": "REAL",
    "completed_by": "TEXT",
    "kind": "TEXT NOT NULL DEFAULT 'sync'",
}

# Column names are constants of this module, never input.
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM jobs"  # noqa: S608


class JobStore:
    def __init__(self, path: Path, history_limit: int) -> None:
        self.path = path
        self.history_limit = history_limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.target_summaries = TargetSummaries(self._db, self._lock)
        with self._lock:
            self._db.executescript(SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:  # names and kinds are constants of this module
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            self.target_summaries.create_table()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def mark_interrupted(self) -> int:
        """Jobs left active by a previous process can never finish: say so."""
        with self._lock:
            now = time.time()
            cursor = self._db.execute(
                "UPDATE jobs SET state='interrupted', finished_at=?, interrupted_at=?, "
                "error='interrupted', message=CASE kind WHEN 'sync' THEN 'The service "
                "stopped before this sync finished; the next sync of this target "
                "completes it' ELSE 'The service stopped before this ' || kind || "
                "' finished; repeat it' END "
                "WHERE state IN ('queued', 'running')",
                (now, now),
            )
            return cursor.rowcount

    def complete_interrupted(self, target: str, job_id: str) -> list[str]:
        """Record that ``job_id``, a successful sync of ``target``, did its interrupted jobs' work.

        A sync pulls the whole workspace, so a later successful one backs up
        everything an interrupted one would have. Returns the completed ids.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE target=? AND state='interrupted' AND id != ? "
                "AND kind='sync'",
                (target, job_id),
            ).fetchall()
            ids = [row[0] for row in rows]
            for owed in ids:
                self._db.execute(
                    "UPDATE jobs SET state='succeeded', completed_by=?, error=NULL, "
                    "interrupted_at=COALESCE(interrupted_at, finished_at), "
                    "message='Cut off by a shutdown or a crash; completed by job ' || ? "
                    "WHERE id=?",
                    (job_id, job_id, owed),
                )
            return ids

    def owed_runs(self) -> list[dict[str, Any]]:
        """Targets with interrupted jobs that no later sync has completed yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT target, workspace, remote, branch, COUNT(*), "
                "MIN(COALESCE(interrupted_at, finished_at)) FROM jobs "
                "WHERE state='interrupted' AND kind='sync' GROUP BY target ORDER BY 6"
            ).fetchall()
        return [
            {
                "target": target,
                "workspace": workspace,
                "remote": remote,
                "branch": branch,
                "interrupted_jobs": count,
                "since": _stamp(since),
            }
            for target, workspace, remote, branch, count, since in rows
        ]

    def create(
        self,
        job_id: str,
        *,
        target: str,
        workspace: str,
        remote: str,
        branch: str,
        kind: str = "sync",
    ) -> None:
        """Record an accepted job; :class:`JobStoreUnavailable` if DATA_DIR cannot take it.

        A job nobody can look up must not run: the caller is told to come back.
        """
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO jobs (id, target, workspace, remote, branch, state, phase, "
                    "created_at, kind) VALUES (?, ?, ?, ?, ?, 'queued', 'queued', ?, ?)",
                    (job_id, target, workspace, remote, branch, time.time(), kind),
                )
                self._prune()
        except (sqlite3.Error, OSError) as exc:
            log.error("the job history cannot be written: %s", exc, extra={"event": "job_store"})
            raise JobStoreUnavailable(
                "The job history in DATA_DIR cannot be written (the disk is full or "
                f"read-only); retry in {STORE_RETRY_AFTER_SECONDS} s",
                STORE_RETRY_AFTER_SECONDS,
            ) from None

    def add_request(self, job_id: str) -> None:
        """Count one more caller of a job; best effort (the count is informational)."""
        try:
            with self._lock:
                self._db.execute("UPDATE jobs SET requests = requests + 1 WHERE id=?", (job_id,))
        except (sqlite3.Error, OSError) as exc:
            log.warning("a job's request count was not recorded: %s", exc)

    def update(self, job_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown job fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name}=?" for name in fields)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id=?",  # noqa: S608
                (*fields.values(), job_id),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                _SELECT + " WHERE id=?",
                (job_id,),
            ).fetchone()
        return _to_dict(row) if row else None

    def recent(self, *, workspace: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = _SELECT
        params: tuple[Any, ...] = ()
        if workspace is not None:
            query += " WHERE workspace=?"
            params = (workspace,)
        query += " ORDER BY created_at DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [_to_dict(row) for row in rows]

    def targets(self, recent: int = 30) -> list[dict[str, Any]]:
        """One summary per target seen in the history, most recently active first."""
        with self._lock:
            targets = self._db.execute(
                "SELECT target, MAX(created_at) AS last FROM jobs WHERE kind='sync' "
                "GROUP BY target ORDER BY last DESC"
            ).fetchall()
            summaries = []
            for target, _last in targets:
                rows = self._db.execute(
                    _SELECT + " WHERE target=? AND kind='sync' ORDER BY created_at DESC LIMIT ?",
                    (target, recent),
                ).fetchall()
                success = self._db.execute(
                    "SELECT finished_at, commit_id FROM jobs WHERE target=? AND "
                    "state IN ('succeeded', 'partial') AND kind='sync' "
                    "ORDER BY finished_at DESC LIMIT 1",
                    (target,),
                ).fetchone()
                # The success may be older than the jobs kept; the summary is not pruned.
                kept = self._db.execute(
                    "SELECT last_success_at, held FROM target_summary WHERE target=?", (target,)
                ).fetchone()
                owed = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE target=? AND state='interrupted' "
                    "AND kind='sync'",
                    (target,),
                ).fetchone()[0]
                summaries.append((target, rows, success, kept, owed))
        result = []
        for target, rows, success, kept, owed in summaries:
            kept_success_at = kept[0] if kept else None
            held = json.loads(kept[1]) if kept else []
            jobs = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
            latest = jobs[0]
            last_success_at = max(
                (t for t in (success[0] if success else None, kept_success_at) if t is not None),
                default=None,
            )
            failed = [
                j
                for j in jobs
                if j["state"] in ("failed", "refused", "interrupted")
                and (last_success_at is None or (j["finished_at"] or 0) > last_success_at)
            ]
            result.append(
                {
                    "target": target,
                    "workspace": latest["workspace"],
                    "remote": latest["remote"],
                    "branch": latest["branch"],
                    "last_success_at": last_success_at,
                    "last_commit": success[1] if success else None,
                    "last_error": failed[0]["message"] if failed else None,
                    "state": latest["state"],
                    "owed_jobs": owed,
                    "held": held,
                    "recent": [
                        {
                            "state": j["state"],
                            "changed": j["changed"],
                            "seconds": (j["finished_at"] - j["started_at"])
                            if j["finished_at"] and j["started_at"]
                            else None,
                        }
                        for j in reversed(jobs)
                    ],
                }
            )
        return result

    # The target summaries (summaries.py) share this database and its lock;
    # these two are what the metrics and the staleness watchdog read.
    def summaries(self) -> list[TargetSummary]:
        return self.target_summaries.all()

    def note_stale_alert(self, target: str, last_success_at: float) -> None:
        self.target_summaries.note_stale_alert(target, last_success_at)

    def _prune(self) -> None:
        self._db.execute(
            # Interrupted jobs stay until a sync completes them: a run is owed.
            "DELETE FROM jobs WHERE state NOT IN ('queued', 'running', 'interrupted') "
            "AND id NOT IN (SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?)",
            (self.history_limit,),
        )


def _to_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    data = dict(zip(_COLUMNS, row, strict=True))
    result = data.pop("result_json")
    data["commit"] = data.pop("commit_id")
    if data["changed"] is not None:
        data["changed"] = bool(data["changed"])
    stored = json.loads(result) if result else {}
    data["files"] = stored.get("files", [])
    data["secret_findings"] = stored.get("secret_findings", [])
    # Items held back for possible secrets (state "partial"); never a value.
    data["held_items"] = stored.get("held_items", [])
    # "skipped" when the CLI was not started; absent for jobs that never finished.
    if "pull" in stored:
        data["pull"] = stored["pull"]
        if stored.get("pull_reason"):
            data["pull_reason"] = stored["pull_reason"]
    # What the backup leaves out, and Windmill's version beside the CLI's (outcomes.py).
    for key in ("not_backed_up", "scope_excludes", "skipped_by_policy", "windmill"):
        if key in stored:
            data[key] = stored[key]
    # A restore's or a history fetch's answer, for a caller that was told to poll.
    if "result" in stored:
        data["result"] = stored["result"]
    for stamp in ("created_at", "started_at", "finished_at", "interrupted_at"):
        data[stamp] = _stamp(data[stamp])
    return data


def _stamp(seconds: float | None) -> str | None:
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
