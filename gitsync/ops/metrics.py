"""Prometheus metrics, in the vocabulary of kubernetes/git-sync.

A target label is the workspace plus the remote's host and path (and branch,
and path prefix when set): never a token. Each app has its own registry, so
several apps in one process (tests) do not share counters.

The per-target gauges start from the job store's summaries at start-up, so a
restart does not make a target's series vanish (and a staleness alert rule
on them go blind) until its next sync; counters start at zero, as Prometheus
expects of a restarted process.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gitsync.version import CLI_VERSION, service_version

OUTCOMES = ("success", "noop", "partial", "error", "refused")
# Outcomes after which the backup is fresh: "partial" pushed all but the held items.
BACKED_UP = ("success", "noop", "partial")


class TargetSummary(Protocol):
    """What the job store remembers of a target (jobs/summaries.py), as the gauges need it."""

    @property
    def label(self) -> str: ...
    @property
    def last_success_at(self) -> float | None: ...
    @property
    def last_attempt_at(self) -> float: ...
    @property
    def last_outcome(self) -> str: ...
    @property
    def held(self) -> Sequence[Mapping[str, object]]: ...
    @property
    def not_backed_up(self) -> int | None: ...


def target_label(workspace: str, remote_url: str, branch: str, prefix: str = "") -> str:
    parts = urllib.parse.urlsplit(remote_url)
    label = f"{workspace}@{parts.netloc}{parts.path}#{branch}"
    return f"{label}:{prefix}" if prefix else label


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The usual build_info idiom: a constant 1 whose labels say what runs,
        # to join on (`* on (instance) group_left(version) ...`) or alert on.
        self.build_info = Gauge(
            "windmill_git_sync_build_info",
            "Always 1; the labels are the service's version and the pinned wmill CLI's",
            ["version", "cli_version"],
            registry=r,
        )
        self.build_info.labels(service_version(), CLI_VERSION).set(1)
        self.syncs = Counter(
            "windmill_git_sync_count",
            "Syncs by outcome and target",
            ["outcome", "target"],
            registry=r,
        )
        self.duration = Histogram(
            "windmill_git_sync_duration_seconds",
            "How long syncs take",
            ["outcome"],
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
            registry=r,
        )
        self.items_changed = Counter(
            "windmill_git_sync_items_changed",
            "Files changed by syncs",
            ["target", "change"],
            registry=r,
        )
        self.commits = Counter(
            "windmill_git_sync_commits_pushed", "Commits pushed", ["target"], registry=r
        )
        self.secret_findings = Counter(
            "windmill_git_sync_secret_findings",
            "Possible secrets found in what syncs added, by what was done (held, blocked, pushed)",
            ["target", "action"],
            registry=r,
        )
        self.held_items = Gauge(
            "windmill_git_sync_held_items",
            "Items the last sync of a target held back for possible secrets (0: none)",
            ["target"],
            registry=r,
        )
        self.retries = Counter(
            "windmill_git_sync_retries", "Retries of transient failures", ["step"], registry=r
        )
        self.queue_depth = Gauge(
            "windmill_git_sync_queue_depth", "Syncs waiting for a slot", registry=r
        )
        self.in_flight = Gauge("windmill_git_sync_in_flight", "Syncs running", registry=r)
        self.last_success = Gauge(
            "windmill_git_sync_last_success_timestamp_seconds",
            "Unix time of the last successful sync (changed or not) per target",
            ["target"],
            registry=r,
        )
        self.last_attempt = Gauge(
            "windmill_git_sync_last_attempt_timestamp_seconds",
            "Unix time of the last sync attempt per target",
            ["target"],
            registry=r,
        )
        self.last_outcome = Gauge(
            "windmill_git_sync_last_outcome",
            "1 for the outcome of the last sync per target, 0 for the other outcomes",
            ["target", "outcome"],
            registry=r,
        )
        self.not_backed_up = Gauge(
            "windmill_git_sync_not_backed_up_items",
            "Items Windmill has that the last successful sync's backup does not (0: complete)",
            ["target"],
            registry=r,
        )

    def restore(self, summaries: Iterable[TargetSummary]) -> None:
        """Set the per-target gauges from what the job store remembers."""
        for summary in summaries:
            if summary.not_backed_up is not None:
                self.not_backed_up.labels(summary.label).set(summary.not_backed_up)
            self.last_attempt.labels(summary.label).set(summary.last_attempt_at)
            if summary.last_success_at is not None:
                self.last_success.labels(summary.label).set(summary.last_success_at)
            self._set_outcome(summary.label, summary.last_outcome)
            self.held_items.labels(summary.label).set(len(summary.held))

    def record_coverage(self, target: str, not_backed_up: int) -> None:
        self.not_backed_up.labels(target).set(not_backed_up)

    def _set_outcome(self, target: str, outcome: str) -> None:
        for each in OUTCOMES:
            self.last_outcome.labels(target, each).set(1 if each == outcome else 0)

    def record(
        self,
        target: str,
        outcome: str,
        seconds: float,
        *,
        added: int = 0,
        modified: int = 0,
        deleted: int = 0,
        commits: int = 0,
        at: float | None = None,
    ) -> None:
        now = time.time() if at is None else at
        self.syncs.labels(outcome, target).inc()
        self.duration.labels(outcome).observe(seconds)
        self.last_attempt.labels(target).set(now)
        if outcome in BACKED_UP:
            self.last_success.labels(target).set(now)
        self._set_outcome(target, outcome)
        for change, n in (("added", added), ("modified", modified), ("deleted", deleted)):
            if n:
                self.items_changed.labels(target, change).inc(n)
        if commits:
            self.commits.labels(target).inc(commits)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
