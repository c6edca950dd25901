"""The HTTP layer: a thin Flask app over :class:`SyncService`.

``create_app`` builds everything; nothing happens at import time. Errors are
mapped to answers in one place (the error handlers below). Requests are
checked in this order, before any body is parsed: authentication, then the
body's framing and size, then its JSON, then its fields.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import json
import logging
import re
import uuid
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException

from gitsync.backup.job import success_message
from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.errors import (
    BodyTooLarge,
    Busy,
    LengthRequired,
    RequestError,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
    WindmillGitSyncError,
)
from gitsync.inputs.requests import (
    parse_history_query,
    parse_history_request,
    parse_restore_request,
    parse_sync_request,
)
from gitsync.jobs.runner import RETRY_AFTER_SECONDS, SyncRunner
from gitsync.jobs.store import JobStore
from gitsync.jobs.tasks import HISTORY, RESTORE
from gitsync.ops.alerts import AlertSender, Watchdog
from gitsync.ops.metrics import Metrics
from gitsync.ops.readiness import Readiness
from gitsync.recovery.history import HistoryQuery, item_history
from gitsync.recovery.restore import RestoreService
from gitsync.web import access_log, status_page
from gitsync.web.drain import JOB_ID_KEY, Drain
from gitsync.web.waiting import NotWaited, Waiters
from gitsync.windmill.process import file_size_limit_problem

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"[0-9a-f]{32}")

# Paths anyone may call even when inbound authentication is on.
PUBLIC_PATHS = frozenset({"/health", "/ready"})
# What a drain turns away: new work. Reads (/health, /jobs/<id>) go on.
REFUSED_WHILE_DRAINING = frozenset({("POST", "/sync"), ("POST", "/restore"), ("POST", "/history")})


# A sync that pushed everything but the items held for secrets (restic's exit
# code 3, borg's warning): not 2xx, so that a caller checking only the status
# (the Windmill kit's script) fails its run and the owner sees it.
HELD_STATUS = 422


def create_app(settings: Settings, service: SyncService | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    service = service or SyncService(settings)
    service.prepare_data_dir()
    store = JobStore(settings.data_dir / "jobs.sqlite3", settings.job_history)
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
    metrics = Metrics()
    metrics.restore(store.summaries())
    alerts = (
        AlertSender(settings.alert_webhook_url.reveal()) if settings.alert_webhook_url else None
    )
    runner = SyncRunner(service, store, settings, metrics, alerts)
    # One set of target locks for syncs, restores and history fetches alike.
    restorer = RestoreService(settings, service.locks, held_lookup=store.target_summaries.held_at)
    readiness = Readiness(settings, service.windmill_version)
    waiters = Waiters(settings.server_threads, settings.sync_timeout)
    file_limit = file_size_limit_problem(settings.max_file_bytes)
    if file_limit is not None:
        # Promised by the operator's MAX_FILE_BYTES, and not kept: say so now and in /ready.
        log.warning(
            "MAX_FILE_BYTES (%d) will not be applied: %s",
            settings.max_file_bytes,
            file_limit,
            extra={"event": "limit_not_applied", "limit": "MAX_FILE_BYTES"},
        )
    if alerts is not None:
        watchdog = Watchdog(
            store, alerts, stale_after=settings.stale_after, interval=settings.alert_check_interval
        )
        watchdog.start()
        app.extensions["gitsync.watchdog"] = watchdog
    app.extensions["windmill_git_sync"] = runner
    drain = Drain()
    app.extensions["gitsync.web.drain"] = drain
    # Outermost: the access log sees the drain's count end, and every answer.
    app.wsgi_app = access_log.wrap(drain.wrap(app.wsgi_app))  # type: ignore[method-assign,assignment]
    openapi = _load_openapi()
    if settings.sync_auth_token is None:
        log.warning(
            "inbound authentication is off: anyone who can reach this service can "
            "trigger syncs (set SYNC_AUTH_TOKEN_FILE to require a bearer token)"
        )

    @app.before_request
    def check_request() -> None:
        if request.path not in PUBLIC_PATHS and settings.sync_auth_token is not None:
            _check_bearer(settings.sync_auth_token.reveal())
        if drain.draining and (request.method, request.path) in REFUSED_WHILE_DRAINING:
            raise ShuttingDown("The service is shutting down; retry shortly", RETRY_AFTER_SECONDS)
        if request.method in ("POST", "PUT", "PATCH"):
            _check_body_framing(settings.max_body_bytes)

    @app.get("/health")
    def health() -> Any:
        return jsonify(status="healthy")

    @app.get("/ready")
    def ready() -> Any:
        problems = readiness.problems()
        if drain.draining:
            problems.insert(0, "shutting down: new syncs are refused")
        # Owed runs do not make the service unready: the sync that completes them must get in.
        owed = store.owed_runs()
        windmill = readiness.windmill()
        limits = readiness.limits()
        if problems:
            response = jsonify(
                status="not ready",
                problems=problems,
                owed_runs=owed,
                windmill=windmill,
                limits=limits,
            )
            response.status_code = 503
            return response
        return jsonify(status="ready", owed_runs=owed, windmill=windmill, limits=limits)

    @app.get("/metrics")
    def prometheus_metrics() -> Any:
        return Response(metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/")
    def status() -> Any:
        html = status_page.render(
            store.targets(),
            settings.stale_after,
            coverage=store.target_summaries.coverages(),
            versions=service.windmill_version.current(timeout=2),
        )
        response = Response(html, mimetype="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"
        )
        return response

    @app.get("/openapi.json")
    def openapi_document() -> Any:
        return Response(openapi, mimetype="application/json")

    @app.post("/sync")
    def sync() -> Any:
        req = parse_sync_request(_json_body(), settings.git_allowed_hosts)
        ticket = runner.submit(req.to_job())
        request.environ[JOB_ID_KEY] = ticket.job_id
        queued = f"Sync of workspace '{req.workspace}' queued"
        if not req.wait or "respond-async" in request.headers.get("Prefer", ""):
            return _accepted(ticket.job_id, queued, coalesced=ticket.coalesced)
        try:
            result = waiters.result(ticket.run.future)  # the runner logs and counts it
        except NotWaited:
            return _accepted(ticket.job_id, queued, coalesced=ticket.coalesced)
        held = bool(result.all_held)
        response = jsonify(
            success=not held,
            message=success_message(result),
            job_id=ticket.job_id,
            coalesced=ticket.coalesced,
            # Pushed, but not whole: a caller that reads only the status or
            # "success" must not take it for a complete backup.
            **({"error": "secrets_held", "partial": True} if held else {}),
            **result.to_dict(),
        )
        response.status_code = HELD_STATUS if held else 200
        return response

    @app.post("/restore")
    def restore() -> Any:
        req = parse_restore_request(_json_body(), settings.git_allowed_hosts)
        job = req.to_job()
        task = runner.submit_task(
            RESTORE,
            job.key(settings),
            workspace=job.workspace,
            remote=job.remote_url,
            branch=job.branch,
            work=lambda: restorer.restore(job),
            describe=lambda result: result.to_dict(),
        )
        request.environ[JOB_ID_KEY] = task.job_id
        try:
            result = waiters.result(task.future)
        except NotWaited:
            return _accepted(task.job_id, f"Restore into workspace '{job.workspace}' queued")
        verb = "Restored" if result.applied else "Dry run: would restore"
        return jsonify(
            success=True,
            message=f"{verb} {len(result.changes)} changes into workspace '{result.workspace}' "
            f"from '{result.git_ref}'",
            job_id=task.job_id,
            **result.to_dict(),
        )

    @app.get("/history")
    def history() -> Any:
        return _history(parse_history_query(dict(request.args)))

    @app.post("/history")
    def deepened_history() -> Any:
        req = parse_history_request(_json_body(), settings.git_allowed_hosts)
        query = req.to_query()
        # It fetches into the target's copy: a job in the target's lane, like a sync.
        task = runner.submit_task(
            HISTORY,
            query.key(settings),
            workspace=query.workspace,
            remote=query.remote_url,
            branch=query.branch,
            work=lambda: item_history(settings, query, service.locks),
        )
        request.environ[JOB_ID_KEY] = task.job_id
        try:
            found = waiters.result(task.future)
        except NotWaited:
            return _accepted(task.job_id, f"History of '{query.item_path}' queued")
        return jsonify(
            success=True,
            workspace=query.workspace,
            path=query.item_path,
            job_id=task.job_id,
            **found.to_dict(),
        )

    def _history(query: HistoryQuery) -> Any:
        found = item_history(settings, query, service.locks)
        return jsonify(
            success=True, workspace=query.workspace, path=query.item_path, **found.to_dict()
        )

    @app.get("/jobs/<job_id>")
    def job(job_id: str) -> Any:
        record = store.get(job_id) if _JOB_ID.fullmatch(job_id) else None
        if record is None:
            return _error(
                404,
                "not_found",
                f"No such job (the history keeps the last {settings.job_history} jobs)",
            )
        return jsonify(record)

    @app.get("/jobs")
    def jobs() -> Any:
        workspace = request.args.get("workspace")
        try:
            limit = min(max(int(request.args.get("limit", "50")), 1), 500)
        except ValueError:
            raise RequestError("Invalid limit: must be a number") from None
        return jsonify(jobs=store.recent(workspace=workspace, limit=limit))

    @app.errorhandler(WindmillGitSyncError)
    def known_error(exc: WindmillGitSyncError) -> Any:
        job_id = getattr(exc, "job_id", None)
        # Sync jobs are logged by the runner; other failures (restores) here.
        # A drain's refusals are no failure: the access log has each of them.
        if exc.http_status >= 409 and job_id is None and not isinstance(exc, ShuttingDown):
            log.error(
                "sync failed: %s",
                exc.message,
                extra={
                    "event": "sync",
                    "outcome": "refused" if exc.http_status < 500 else "error",
                    "error": exc.code,
                    "detail": exc.detail,
                    "job_id": job_id,
                    "attempts": exc.attempts,
                },
            )
        headers: dict[str, str] = {}
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, Busy):
            headers["Retry-After"] = str(exc.retry_after)
        extra: dict[str, Any] = {"attempts": exc.attempts} if exc.attempts > 1 else {}
        if job_id:
            extra["job_id"] = job_id
        extra.update(exc.response_extra)
        return _error(exc.http_status, exc.code, exc.message, headers, extra)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if code == 413:
            return _error(
                413,
                BodyTooLarge.code,
                f"Request body is larger than {settings.max_body_bytes} bytes",
            )
        return _error(
            code,
            (exc.name or "error").lower().replace(" ", "_"),
            exc.description or exc.name or "error",
        )

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        # The one catch-all: log the traceback under an id, return only the id.
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error (incident %s)", incident)
        return _error(
            500, "internal_error", f"Internal error (incident {incident}); see the service log"
        )

    return app


def _accepted(job_id: str, message: str, **extra: Any) -> Any:
    """202: the job is accepted and runs on; ``GET /jobs/<id>`` reports it."""
    response = jsonify(
        success=True, message=message, job_id=job_id, status_url=f"/jobs/{job_id}", **extra
    )
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{job_id}"
    return response


def _check_bearer(expected: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    # Compare digests so the comparison's length and timing say nothing.
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        hashlib.sha256(presented.strip().encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )
    if not ok:
        raise Unauthorized("Missing or wrong bearer token (Authorization: Bearer <token>)")


def _check_body_framing(limit: int) -> None:
    # waitress de-chunks HTTP/1.1 bodies within max_request_body_size (413
    # beyond it), and they arrive here with a Content-Length. A body still
    # marked chunked (HTTP/1.0) was not de-chunked: it would read as empty.
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        raise LengthRequired("Chunked request bodies need HTTP/1.1; send Content-Length")
    length = request.content_length
    if length is None:
        raise LengthRequired("Request body needs a Content-Length header")
    if length > limit:
        raise BodyTooLarge(f"Request body is larger than {limit} bytes")


def _json_body() -> Any:
    if not request.mimetype or request.mimetype != "application/json":
        raise UnsupportedMediaType("Request body must be JSON (Content-Type: application/json)")
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError):
        raise RequestError("Request body is not valid JSON") from None


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Any:
    response = jsonify(success=False, error=code, message=message, **(extra or {}))
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _load_openapi() -> str:
    return (importlib.resources.files(__package__) / "openapi.json").read_text()
