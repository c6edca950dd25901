"""What every request goes through before a route reads it, and the 202 a queued job gets.

Checked in this order, before any body is parsed: authentication, then the
drain, then the body's framing and size; a route then reads the JSON and the
request models (``gitsync/inputs``) check its fields.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from concurrent.futures import Future
from typing import Any, TypeVar

from flask import Response, jsonify, request

from gitsync.config import Settings
from gitsync.errors import (
    BodyTooLarge,
    LengthRequired,
    RequestError,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
)
from gitsync.jobs.runner import RETRY_AFTER_SECONDS
from gitsync.web.components import current
from gitsync.web.drain import JOB_ID_KEY, Drain
from gitsync.web.waiting import NotWaited

T = TypeVar("T")

# Paths anyone may call even when inbound authentication is on.
PUBLIC_PATHS = frozenset({"/health", "/ready"})
# What a drain turns away: new work. Reads (/health, /jobs/<id>) go on.
REFUSED_WHILE_DRAINING = frozenset({("POST", "/sync"), ("POST", "/restore"), ("POST", "/history")})


def check(settings: Settings, drain: Drain) -> None:
    """Every request, before its route: authentication, the drain, the body's framing."""
    token = settings.sync_auth_token
    if request.path not in PUBLIC_PATHS and token is not None:
        check_bearer(token.reveal())
    if drain.draining and (request.method, request.path) in REFUSED_WHILE_DRAINING:
        raise ShuttingDown("The service is shutting down; retry shortly", RETRY_AFTER_SECONDS)
    if request.method in ("POST", "PUT", "PATCH"):
        check_body_framing(settings.max_body_bytes)


def check_bearer(expected: str) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    # Compare digests so the comparison's length and timing say nothing.
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        hashlib.sha256(presented.strip().encode()).digest(),
        hashlib.sha256(expected.encode()).digest(),
    )
    if not ok:
        raise Unauthorized("Missing or wrong bearer token (Authorization: Bearer <token>)")


def check_body_framing(limit: int) -> None:
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


def json_body() -> Any:
    if not request.mimetype or request.mimetype != "application/json":
        raise UnsupportedMediaType("Request body must be JSON (Content-Type: application/json)")
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError):
        raise RequestError("Request body is not valid JSON") from None


def waited(job_id: str, future: Future[T], queued: str, **extra: Any) -> T | Response:
    """The job's result, or 202 with the job to poll when its caller may not wait for it."""
    request.environ[JOB_ID_KEY] = job_id
    try:
        return current().waiters.result(future)
    except NotWaited:
        return accepted(job_id, queued, **extra)


def accepted(job_id: str, message: str, **extra: Any) -> Response:
    """202: the job is accepted and runs on; ``GET /jobs/<id>`` reports it."""
    response = jsonify(
        success=True, message=message, job_id=job_id, status_url=f"/jobs/{job_id}", **extra
    )
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{job_id}"
    return response
