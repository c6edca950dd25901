"""The one place errors become HTTP answers: a table of statuses and three handlers.

The core raises typed errors that know nothing of HTTP; here each class is
given its status (the first class in the table the error is an instance of),
its headers (``Retry-After``, ``WWW-Authenticate``) and its body: ``success:
false``, the stable ``error`` code, the message, and the error's own facts.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from gitsync.errors import (
    BodyTooLarge,
    Busy,
    InsufficientStorage,
    LengthRequired,
    MassDeletionRefused,
    NotFound,
    NoWorkspaces,
    RequestError,
    SecretDetected,
    ShuttingDown,
    Unauthorized,
    UnsupportedMediaType,
    WindmillGitSyncError,
)

log = logging.getLogger(__name__)

# Most specific first; anything else the core raises is a 500.
STATUS: tuple[tuple[type[WindmillGitSyncError], int], ...] = (
    (Unauthorized, 401),
    (NotFound, 404),
    (LengthRequired, 411),
    (BodyTooLarge, 413),
    (UnsupportedMediaType, 415),
    (RequestError, 400),
    (MassDeletionRefused, 409),
    (SecretDetected, 422),
    (NoWorkspaces, 422),
    (Busy, 503),
    (InsufficientStorage, 507),
    (WindmillGitSyncError, 500),
)


def status_of(exc: WindmillGitSyncError) -> int:
    return next(status for cls, status in STATUS if isinstance(exc, cls))


def error_response(
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


def register(app: Flask, max_body_bytes: int) -> None:
    """The app's error handlers: the core's errors, Werkzeug's, and the one catch-all."""

    @app.errorhandler(WindmillGitSyncError)
    def known_error(exc: WindmillGitSyncError) -> Any:
        status = status_of(exc)
        # Jobs are logged by the runner; failures outside one (a bad restore
        # request's refusal, say) here. A drain's refusals are no failure:
        # the access log has each of them.
        if status >= 409 and exc.job_id is None and not isinstance(exc, ShuttingDown):
            log.error(
                "sync failed: %s",
                exc.message,
                extra={
                    "event": "sync",
                    "outcome": "refused" if status < 500 else "error",
                    "error": exc.code,
                    "detail": exc.detail,
                    "job_id": exc.job_id,
                    "attempts": exc.attempts,
                },
            )
        headers: dict[str, str] = {}
        if isinstance(exc, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, Busy):
            headers["Retry-After"] = str(exc.retry_after)
        extra: dict[str, Any] = {"attempts": exc.attempts} if exc.attempts > 1 else {}
        if exc.job_id:
            extra["job_id"] = exc.job_id
        extra.update(exc.facts())
        return error_response(status, exc.code, exc.message, headers, extra)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        if code == 413:
            return error_response(
                413, BodyTooLarge.code, f"Request body is larger than {max_body_bytes} bytes"
            )
        return error_response(
            code,
            (exc.name or "error").lower().replace(" ", "_"),
            exc.description or exc.name or "error",
        )

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        # The one catch-all: log the traceback under an id, return only the id.
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error (incident %s)", incident)
        return error_response(
            500, "internal_error", f"Internal error (incident {incident}); see the service log"
        )
