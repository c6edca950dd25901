"""One access log line per request, in the service's JSON log (waitress writes none).

The line names the method, the path without its query, the status, the
duration until waitress had taken the whole response, and the bytes of the
body sent. Never a request body or a header value: bodies carry tokens.
waitress's own refusals (413, 431, 400) never reach the app and so are not
here; waitress logs nothing for them either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gitsync.web.drain import JOB_ID_KEY, ClosingBody

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


def wrap(app: WSGIApplication) -> WSGIApplication:
    def logged(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.monotonic()
        status: list[str] = []

        def recording_start_response(
            code: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
        ) -> Any:
            status[:] = [code]
            return start_response(code, headers, exc_info)

        line = _Line(environ, started, status)
        try:
            body = app(environ, recording_start_response)
        except BaseException:
            status[:] = ["500"]
            line.write(0)
            raise
        # waitress closes the body once it has taken the last chunk (or the client left).
        return ClosingBody(body, line.write)

    return logged


class _Line:
    def __init__(self, environ: WSGIEnvironment, started: float, status: list[str]) -> None:
        self.environ = environ
        self.started = started
        self.status = status

    def write(self, sent: int) -> None:
        env = self.environ
        code = self.status[0].split(" ", 1)[0] if self.status else "0"
        log.info(
            "%s %s %s",
            env.get("REQUEST_METHOD", "-"),
            env.get("PATH_INFO", "-"),
            code,
            extra={
                "event": "http",
                "method": env.get("REQUEST_METHOD", "-"),
                "path": env.get("PATH_INFO", "-"),
                "status": int(code) if code.isdigit() else 0,
                "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
                "bytes": sent,
                "remote": env.get("REMOTE_ADDR", "-"),
                "job_id": env.get(JOB_ID_KEY),
            },
        )
