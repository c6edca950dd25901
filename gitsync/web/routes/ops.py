"""For those who watch: /health, /ready, /metrics, the status page and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from gitsync.web import status_page
from gitsync.web.components import current

ops = Blueprint("ops", __name__)


@ops.get("/health")
def health() -> Any:
    return jsonify(status="healthy")


@ops.get("/ready")
def ready() -> Any:
    c = current()
    problems = c.readiness.problems()
    if c.drain.draining:
        problems.insert(0, "shutting down: new syncs are refused")
    facts = {
        # Owed runs do not make the service unready: the sync that completes them must get in.
        "owed_runs": c.store.owed_runs(),
        "windmill": c.readiness.windmill(),
        "limits": c.readiness.limits(),
    }
    if problems:
        response = jsonify(status="not ready", problems=problems, **facts)
        response.status_code = 503
        return response
    return jsonify(status="ready", **facts)


@ops.get("/metrics")
def prometheus_metrics() -> Any:
    return Response(current().metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)


@ops.get("/")
def status() -> Any:
    c = current()
    html = status_page.render(
        c.store.targets(),
        c.settings.stale_after,
        coverage=c.store.target_summaries.coverages(),
        versions=c.service.windmill_version.current(timeout=2),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'"
    )
    return response


@ops.get("/openapi.json")
def openapi_document() -> Any:
    return Response(current().openapi, mimetype="application/json")
