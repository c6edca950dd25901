"""The requests waitress refuses itself (413, 431, 400, 501), answered and logged like the app's.

waitress answers these before the app is called: by default in plain text,
unlogged, and, for a too-large body announced with ``Expect: 100-continue``,
only after sending ``100 Continue`` and waiting for the body it is about to
refuse. This channel answers at once, in the app's JSON error shape, and
writes the access log line the app never could.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from waitress.channel import HTTPChannel  # type: ignore[import-untyped]
from waitress.task import ErrorTask  # type: ignore[import-untyped]

log = logging.getLogger("gitsync.web.access_log")

# waitress's status codes, in the error codes the app uses for the same refusals.
_CODES = {
    400: "bad_request",
    413: "body_too_large",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    def execute(self) -> None:
        error = self.request.error
        adj = self.channel.server.adj
        if error.code == 413:
            # max_request_body_size is one byte over MAX_BODY_BYTES (waitress refuses >=).
            message = f"Request body is larger than {adj.max_request_body_size - 1} bytes"
        elif error.code == 431:
            message = f"Request headers are larger than {adj.max_request_header_size - 1} bytes"
        elif error.code == 500:
            message = "Internal error; see the service log"
        else:
            message = f"{error.reason}: {error.body}"
        body = (
            json.dumps(
                {"success": False, "error": _CODES.get(error.code, "error"), "message": message}
            )
            + "\n"
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        log.info(
            "%s %s %d",
            self.request.command or "-",
            self.request.path or "-",
            error.code,
            extra={
                "event": "http",
                "method": self.request.command or "-",
                "path": self.request.path or "-",
                "status": error.code,
                "bytes": len(body),
                "remote": self.channel.addr[0] if self.channel.addr else "-",
                "refused_by": "waitress",
            },
        )


class RefusingChannel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _JsonErrorTask

    def send_continue(self) -> None:
        # A request already refused (its Content-Length is over the limit) gets
        # the refusal now instead of "100 Continue" and a wait for its body.
        request: Any = self.request
        if request is not None and request.error is not None:
            request.expect_continue = False
            return
        super().send_continue()
