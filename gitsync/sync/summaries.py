"""The per-target summary table: what monitoring needs across job pruning and restarts.

One row per target: the last success, the last attempt, the last outcome,
and the last success a staleness alert was sent about. It lives in the job
store's database and shares its connection and lock (one writer); the jobs
are pruned to JOB_HISTORY, these rows never are.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from gitsync.ops.metrics import BACKED_UP, target_label

SCHEMA = """
CREATE TABLE IF NOT EXISTS target_summary (
    target           TEXT PRIMARY KEY,
    label            TEXT NOT NULL,  -- the metrics label
    workspace        TEXT NOT NULL,
    remote           TEXT NOT NULL,
    branch           TEXT NOT NULL,
    last_success_at  REAL,
    last_attempt_at  REAL NOT NULL,
    -- success | noop | error | refused, as the metrics count them
    last_outcome     TEXT NOT NULL,
    -- the last success a staleness alert was sent about
    stale_alert_for  REAL,
    -- JSON: the items the last sync held back for possible secrets
    held             TEXT NOT NULL DEFAULT '[]'
);
"""

# How a finished job's state reads as a metrics outcome (for the upgrade below).
_OUTCOME_OF_STATE = {"failed": "error", "refused": "refused", "partial": "partial"}


@dataclass(frozen=True)
class TargetSummary:
    target: str
    label: str
    workspace: str
    remote: str
    branch: str
    last_success_at: float | None
    last_attempt_at: float
    last_outcome: str
    stale_alert_for: float | None
    held_json: str = "[]"

    @property
    def held(self) -> list[dict[str, Any]]:
        """The items the last sync held back (HeldItem.to_dict), never a value."""
        data = json.loads(self.held_json or "[]")
        return data if isinstance(data, list) else []


class TargetSummaries:
    """The ``target_summary`` table, through the job store's connection and lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def create_table(self) -> None:
        """Create the table if missing, from the kept jobs; the caller holds the lock."""
        had_summary = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='target_summary'"
        ).fetchone()
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(target_summary)")}
        if "held" not in columns:  # a database from before SECRET_SCAN=hold
            self._db.execute(
                "ALTER TABLE target_summary ADD COLUMN held TEXT NOT NULL DEFAULT '[]'"
            )
        if not had_summary:
            self._summarise_existing_jobs()

    def record(
        self,
        target: str,
        *,
        label: str,
        workspace: str,
        remote: str,
        branch: str,
        outcome: str,
        at: float,
        held: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Fold one finished sync into its target's summary; return the items held before.

        ``held`` is what a sync that pushed held back (None: a failed sync,
        which changes nothing of what the backup holds).
        """
        succeeded = outcome in BACKED_UP
        with self._lock:
            before = self._db.execute(
                "SELECT held FROM target_summary WHERE target=?", (target,)
            ).fetchone()
            held_json = json.dumps(held) if held is not None else (before[0] if before else "[]")
            self._db.execute(
                "INSERT INTO target_summary (target, label, workspace, remote, branch, "
                "last_success_at, last_attempt_at, last_outcome, held) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (target) DO UPDATE SET label=excluded.label, "
                "workspace=excluded.workspace, remote=excluded.remote, branch=excluded.branch, "
                "last_success_at=COALESCE(excluded.last_success_at, last_success_at), "
                "last_attempt_at=excluded.last_attempt_at, last_outcome=excluded.last_outcome, "
                "held=excluded.held",
                (
                    target,
                    label,
                    workspace,
                    remote,
                    branch,
                    at if succeeded else None,
                    at,
                    outcome,
                    held_json,
                ),
            )
        previous = json.loads(before[0]) if before else []
        return previous if isinstance(previous, list) else []

    def held_at(self, remote: str, branch: str, path_prefix: str) -> list[dict[str, Any]]:
        """What the last syncs to this branch (and prefix) held back: a restore lacks it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT workspace, label, held FROM target_summary WHERE remote=? AND branch=?",
                (remote, branch),
            ).fetchall()
        held: list[dict[str, Any]] = []
        for workspace, label, held_json in rows:
            if label == target_label(workspace, remote, branch, path_prefix):
                data = json.loads(held_json or "[]")
                held.extend(data if isinstance(data, list) else [])
        return held

    def all(self) -> list[TargetSummary]:
        with self._lock:
            rows = self._db.execute(
                "SELECT target, label, workspace, remote, branch, last_success_at, "
                "last_attempt_at, last_outcome, stale_alert_for, held FROM target_summary "
                "ORDER BY target"
            ).fetchall()
        return [TargetSummary(*row) for row in rows]

    def note_stale_alert(self, target: str, last_success_at: float) -> None:
        """Remember that this silence was reported, so a restart does not report it again."""
        with self._lock:
            self._db.execute(
                "UPDATE target_summary SET stale_alert_for=? WHERE target=?",
                (last_success_at, target),
            )

    def _summarise_existing_jobs(self) -> None:
        # A database from before the summary table: start from what the kept
        # jobs know. The jobs do not record a path prefix, so a prefixed
        # target's label lacks it until that target's next sync.
        rows = self._db.execute(
            "SELECT target, workspace, remote, branch, state, changed, finished_at FROM jobs "
            "WHERE state IN ('succeeded', 'partial', 'failed', 'refused') "
            "AND finished_at IS NOT NULL "
            "ORDER BY finished_at"
        ).fetchall()
        summaries: dict[str, tuple[Any, ...]] = {}
        last_success: dict[str, float] = {}
        for target, workspace, remote, branch, state, changed, finished_at in rows:
            if state in ("succeeded", "partial"):
                outcome = "partial" if state == "partial" else "success" if changed else "noop"
                last_success[target] = finished_at
            else:
                outcome = _OUTCOME_OF_STATE[state]
            label = target_label(workspace, remote, branch)
            summaries[target] = (target, label, workspace, remote, branch, finished_at, outcome)
        self._db.executemany(
            "INSERT OR IGNORE INTO target_summary (target, label, workspace, remote, branch, "
            "last_attempt_at, last_outcome, last_success_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*row, last_success.get(row[0])) for row in summaries.values()],
        )
