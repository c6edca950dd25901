"""Serving the app with waitress, configured for syncs that take minutes.

One process (target locks and job state live in memory) with a thread per
request being served; slow clients cost a connection slot, not a thread,
because waitress's event loop reads whole requests before a thread sees
them. The values below answer the findings of the waitress study
(docs/waitress.md in the shared notes); the drain is in ``drain.py``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from waitress.server import create_server  # type: ignore[import-untyped]

from gitsync.config import Settings
from gitsync.web.app import create_app
from gitsync.web.components import EXTENSION, Components
from gitsync.web.drain import EXIT_DRAINED, run_until_signalled
from gitsync.web.http_refusals import RefusingChannel

log = logging.getLogger(__name__)

# The default (100, of which waitress keeps 2) is used up by a few slow or idle
# clients; about 3 file descriptors each (the image's limit is far above).
CONNECTION_LIMIT = 1000
# Larger headers get 431; ours are a few hundred bytes.
MAX_HEADER_BYTES = 16 * 1024
# How often idle connections are looked for (they live IDLE_CONNECTION_TIMEOUT to + this).
CLEANUP_INTERVAL = 10
# The Server header: no version for a scanner to match.
SERVER_NAME = "windmill-git-sync"


def waitress_options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "threads": settings.server_threads,
        "connection_limit": CONNECTION_LIMIT,
        # select() crashes on a file descriptor past 1024; poll() does not.
        "asyncore_use_poll": True,
        "channel_timeout": settings.idle_connection_timeout,
        "cleanup_interval": min(CLEANUP_INTERVAL, settings.idle_connection_timeout),
        "max_request_header_size": MAX_HEADER_BYTES + 1,  # refused at >=, as the body
        # waitress refuses a body of this size or more: one byte over the limit
        # lets a body of exactly MAX_BODY_BYTES in. Refused with 413 before it is read.
        "max_request_body_size": settings.max_body_bytes + 1,
        "ident": SERVER_NAME,
        # X-Forwarded-* from anyone are dropped, never trusted.
        "clear_untrusted_proxy_headers": True,
        "expose_tracebacks": False,
    }


def serve(settings: Settings) -> int:
    """Serve until a signal, drain, and return the exit code (see ``drain.run_until_signalled``)."""
    app = create_app(settings)
    built: Components = app.extensions[EXTENSION]
    drain, runner = built.drain, built.runner
    server = create_server(app, **waitress_options(settings))
    server.channel_class = RefusingChannel  # JSON refusals, logged, and no 100 before a 413
    port = int(server.effective_port)
    # The one line that says where the service is (PORT=0 picks a free port).
    log.info(
        "listening on http://%s:%d",
        server.effective_host,
        port,
        extra={
            "event": "listening",
            "host": server.effective_host,
            "port": port,
            "threads": settings.server_threads,
            "shutdown_grace_seconds": settings.shutdown_grace,
        },
    )
    # No warning about HTTP_THREADS any more: callers waiting for jobs never
    # take the last threads (web/waiting.py), so /health never waits behind them.
    code = run_until_signalled(server, drain, runner, settings.shutdown_grace)
    if code != EXIT_DRAINED:
        # Sync threads may still be running; they are not waited for.
        os._exit(code)
    return code
