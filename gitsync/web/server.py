"""Serving the app with gunicorn, configured for syncs that take minutes.

One worker process (target locks and, later, job state live in memory) with
threads, so a long sync never blocks ``/health``. gunicorn's ``timeout`` is a
worker heartbeat under ``gthread``, not a request limit: our own deadlines
bound each sync, and ``graceful_timeout`` lets an in-flight sync finish on
SIGTERM (``docker stop``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

from gitsync.config import Settings
from gitsync.web.app import create_app

log = logging.getLogger(__name__)

# Seconds on top of the sync deadline for answering and closing connections.
SHUTDOWN_MARGIN = 30
_SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented choice for worker_tmp_dir


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": settings.http_threads,
        "timeout": 60,
        "graceful_timeout": int(settings.sync_timeout) + SHUTDOWN_MARGIN,
        "keepalive": 5,
        "limit_request_line": 4094,
        "limit_request_fields": 50,
        "limit_request_field_size": 8190,
        # The access log never shows bodies or headers (bodies carry tokens).
        "accesslog": "-",
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        # The heartbeat file; a read-only root filesystem still has /dev/shm.
        "worker_tmp_dir": _SHM if os.path.isdir(_SHM) else None,
        "control_socket_disable": True,
        "worker_exit": _drain_runner,
    }


def _drain_runner(server: Any, worker: Any) -> None:
    # gunicorn has stopped accepting and finished in-flight requests (within
    # graceful_timeout); syncs started with "wait": false may still run.
    app = getattr(worker, "wsgi", None)
    runner = getattr(app, "extensions", {}).get("windmill_git_sync")
    if runner is not None:
        runner.shutdown()


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            if value is not None and key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    _Server(settings).run()
