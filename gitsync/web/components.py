"""Everything the routes use, built once per app, and what the service says as it starts.

``create_app`` keeps the result in ``app.extensions``; the blueprints reach
it through :func:`current`. Building writes to the job store (jobs cut short
by the last stop are marked) and starts the staleness watchdog, so it
happens in the factory, never at import time.
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass

from flask import current_app

from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.jobs.runner import SyncRunner
from gitsync.jobs.store import JobStore
from gitsync.ops.alerts import AlertSender, Watchdog
from gitsync.ops.metrics import Metrics
from gitsync.ops.readiness import Readiness
from gitsync.recovery.restore import RestoreService
from gitsync.web.drain import Drain
from gitsync.web.waiting import Waiters
from gitsync.windmill.process import file_size_limit_problem

log = logging.getLogger(__name__)

EXTENSION = "gitsync"


@dataclass(frozen=True)
class Components:
    settings: Settings
    service: SyncService
    store: JobStore
    metrics: Metrics
    runner: SyncRunner
    restorer: RestoreService
    readiness: Readiness
    waiters: Waiters
    drain: Drain
    openapi: str
    watchdog: Watchdog | None


def build(settings: Settings, service: SyncService) -> Components:
    service.prepare_data_dir()
    store = JobStore(settings.data_dir / "jobs.sqlite3", settings.job_history)
    _report_last_stop(store)
    metrics = Metrics()
    metrics.restore(store.summaries())
    alerts = (
        AlertSender(settings.alert_webhook_url.reveal()) if settings.alert_webhook_url else None
    )
    watchdog = None
    if alerts is not None:
        watchdog = Watchdog(
            store, alerts, stale_after=settings.stale_after, interval=settings.alert_check_interval
        )
        watchdog.start()
    _report_settings(settings)
    return Components(
        settings=settings,
        service=service,
        store=store,
        metrics=metrics,
        runner=SyncRunner(service, store, settings, metrics, alerts),
        # One set of target locks for syncs, restores and history fetches alike.
        restorer=RestoreService(
            settings, service.locks, held_lookup=store.target_summaries.held_at
        ),
        readiness=Readiness(settings, service.windmill_version),
        waiters=Waiters(settings.server_threads, settings.sync_timeout),
        drain=Drain(),
        openapi=(importlib.resources.files(__package__) / "openapi.json").read_text(),
        watchdog=watchdog,
    )


def current() -> Components:
    """The app's components, for a route."""
    found: Components = current_app.extensions[EXTENSION]
    return found


def _report_last_stop(store: JobStore) -> None:
    interrupted = store.mark_interrupted()
    if interrupted:
        log.warning("%d sync job(s) were cut short when the service last stopped", interrupted)
    for owed in store.owed_runs():
        log.warning(
            "a run is owed: %d interrupted job(s) of workspace '%s'; the next sync of "
            "this target completes them",
            owed["interrupted_jobs"],
            owed["workspace"],
            extra={"event": "owed_run", **owed},
        )


def _report_settings(settings: Settings) -> None:
    file_limit = file_size_limit_problem(settings.max_file_bytes)
    if file_limit is not None:
        # Promised by the operator's MAX_FILE_BYTES, and not kept: say so now and in /ready.
        log.warning(
            "MAX_FILE_BYTES (%d) will not be applied: %s",
            settings.max_file_bytes,
            file_limit,
            extra={"event": "limit_not_applied", "limit": "MAX_FILE_BYTES"},
        )
    if settings.sync_auth_token is None:
        log.warning(
            "inbound authentication is off: anyone who can reach this service can "
            "trigger syncs (set SYNC_AUTH_TOKEN_FILE to require a bearer token)"
        )
