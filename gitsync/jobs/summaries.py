"""The per-target summary table: what monitoring needs across job pruning and restarts.

One row per target: the last success, the last attempt, the last outcome,
the last success a staleness alert was sent about, and the last pull's
coverage (what Windmill has that the backup does not) with the gaps an alert
was sent about. It lives in the job
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
from gitsync.windmill.coverage import Coverage

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
    held             TEXT NOT NULL DEFAULT '[]',
    -- the last successful sync's coverage (windmill/coverage.py), as JSON
    coverage_json    TEXT,
    -- the gaps ("kind path") the last coverage alert was sent about, as JSON
    gaps_alerted     TEXT
);
"""
# Columns added after the first release: added to an older database at start-up.
_ADDED_COLUMNS = {
    "held": "TEXT NOT NULL DEFAULT '[]'",  # SECRET_SCAN=hold
    "coverage_json": "TEXT",
    "gaps_alerted": "TEXT",
}

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
    coverage_json: str | None = None

    @property
    def held(self) -> list[dict[str, Any]]:
        """The items the last sync held back (HeldItem.to_dict), never a value."""
        data = json.loads(self.held_json or "[]")
        return data if isinstance(data, list) else []

    @property
    def coverage(self) -> Coverage | None:
        if self.coverage_json is None:
            return None
        try:
            return Coverage.from_dict(json.loads(self.coverage_json))
        except (ValueError, AttributeError):
            return None

    @property
    def not_backed_up(self) -> int | None:
        coverage = self.coverage
        return None if coverage is None else len(coverage.not_backed_up)


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
        present = {row[1] for row in self._db.execute("PRAGMA table_info(target_summary)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:  # names and kinds are constants of this module
                self._db.execute(f"ALTER TABLE target_summary ADD COLUMN {name} {kind}")
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
                "last_attempt_at, last_outcome, stale_alert_for, held, coverage_json "
                "FROM target_summary "
                "ORDER BY target"
            ).fetchall()
        return [TargetSummary(*row) for row in rows]

    def note_coverage(self, target: str, coverage: Coverage) -> None:
        """Keep a successful sync's coverage: the page and the gauge show it after a restart."""
        with self._lock:
            self._db.execute(
                "UPDATE target_summary SET coverage_json=? WHERE target=?",
                (coverage.to_json(), target),
            )

    def gaps_alerted(self, target: str) -> set[str]:
        with self._lock:
            row = self._db.execute(
                "SELECT gaps_alerted FROM target_summary WHERE target=?", (target,)
            ).fetchone()
        try:
            return {str(g) for g in json.loads(row[0])} if row and row[0] else set()
        except (ValueError, TypeError):
            return set()

    def note_gaps_alerted(self, target: str, gaps: set[str]) -> None:
        """The gaps people were told about: an alert is sent once per new gap, across restarts."""
        with self._lock:
            self._db.execute(
                "UPDATE target_summary SET gaps_alerted=? WHERE target=?",
                (json.dumps(sorted(gaps)), target),
            )

    def coverages(self) -> dict[str, Coverage]:
        """Each target's last known coverage, by target key."""
        return {s.target: c for s in self.all() if (c := s.coverage) is not None}

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
