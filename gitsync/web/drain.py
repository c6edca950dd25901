"""A graceful drain for waitress, which has none of its own.

waitress stops on SIGINT after five seconds whatever is still running, dies
at once on SIGTERM and, as PID 1, ignores SIGTERM altogether. So the event
loop runs in a thread of its own, the signal handlers only set a flag, and
the main thread drains: new syncs and restores are refused with 503 and
Retry-After while everything already accepted finishes, and ``/health`` and
``GET /jobs/<id>`` keep answering. Verified pattern: docs/waitress.md of the
shared notes, section 6.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from gitsync.jobs.runner import SyncRunner

log = logging.getLogger(__name__)

EXIT_DRAINED, EXIT_CUT_OFF, EXIT_SERVER_DIED = 0, 1, 2
# The app may name the job a request waits for, so a cut-off request is named in the log.
JOB_ID_KEY = "gitsync.job_id"


class Drain:
    """Counts requests until waitress has taken their whole response, and says when to refuse.

    The refusal itself (503 ``shutting_down`` with Retry-After) is raised by
    the app, so it goes through the app's one error mapping.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._in_flight: dict[object, WSGIEnvironment] = {}
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    def begin(self) -> None:
        with self._cv:
            self._draining = True

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        def counting(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            token = object()
            with self._cv:
                self._in_flight[token] = environ
            try:
                return ClosingBody(app(environ, start_response), lambda _sent: self._done(token))
            except BaseException:
                self._done(token)
                raise

        return counting

    def _done(self, token: object) -> None:
        with self._cv:
            self._in_flight.pop(token, None)
            self._cv.notify_all()

    def in_flight(self) -> list[str]:
        with self._cv:
            return [
                f"{e.get('REQUEST_METHOD')} {e.get('PATH_INFO')} job={e.get(JOB_ID_KEY, '-')}"
                for e in self._in_flight.values()
            ]

    def wait(self, seconds: float) -> None:
        """Sleep until a request ends or ``seconds`` pass."""
        with self._cv:
            self._cv.wait(seconds)


class ClosingBody:
    """A response body that reports when waitress closes it (all taken, or the client gone).

    ``on_close`` gets the bytes of the body sent until then.
    """

    def __init__(self, body: Iterable[bytes], on_close: Callable[[int], None]) -> None:
        self._body = body
        self._on_close = on_close
        self._sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._body:
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close(self._sent)


class _Server(Protocol):
    def run(self) -> None: ...


def run_until_signalled(server: _Server, drain: Drain, runner: SyncRunner, grace: float) -> int:
    """Serve until SIGTERM or SIGINT, then drain for up to ``grace`` seconds; return the exit code.

    0: everything accepted finished and was answered. 1: the grace ran out or
    a second signal came; what was cut off is recorded as interrupted (the
    next sync of its target completes it). 2: the event loop died.
    """
    signalled = threading.Event()
    signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signum)  # only a flag: the main thread does the work
        signalled.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    loop = threading.Thread(target=server.run, name="waitress", daemon=True)
    loop.start()  # off the main thread, so it keeps serving while main drains
    while not signalled.wait(1.0):
        if not loop.is_alive():
            log.critical("the HTTP server's event loop died; exiting")
            _cut_off(runner, "the HTTP server stopped")
            return EXIT_SERVER_DIED
    signalled.clear()
    deadline = time.monotonic() + grace
    drain.begin()
    runner.stop_accepting()
    log.warning(
        "signal %s: draining for up to %.0f s",
        signal.Signals(signals[0]).name,
        grace,
        extra={"event": "drain", "in_flight": drain.in_flight(), "jobs": runner.unfinished()},
    )
    while time.monotonic() < deadline and not signalled.is_set():
        if runner.idle and not drain.in_flight() and not unsent_bytes(server):
            time.sleep(0.2)  # margin for the last bytes in the kernel's send buffer
            log.warning("drained cleanly; exiting", extra={"event": "drain"})
            runner.close()
            return EXIT_DRAINED
        drain.wait(0.1)
    reason = (
        "a second signal ended the drain"
        if signalled.is_set()
        else f"SHUTDOWN_GRACE_SECONDS ({grace:g} s) ran out"
    )
    cut = _cut_off(runner, reason)
    log.error(
        "exiting with work cut off: %s",
        reason,
        extra={"event": "drain", "in_flight": drain.in_flight(), "interrupted_jobs": cut},
    )
    # Sync threads may still be running (a child process, a push); they are not
    # joined: the next start repairs what they leave, as after a crash.
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    return EXIT_CUT_OFF


def _cut_off(runner: SyncRunner, reason: str) -> list[str]:
    return runner.interrupt_unfinished(reason)


def unsent_bytes(server: Any) -> int:
    """Bytes waitress holds for clients: an app finishes before waitress has sent its answer."""
    # waitress 3.0 internals (TcpWSGIServer._map); 0 if they change, and the
    # fixed margin above is then all that is left.
    channels = getattr(server, "_map", None) or {}
    try:
        return sum(getattr(ch, "total_outbufs_len", 0) for ch in list(channels.values()))
    except (TypeError, AttributeError):
        return 0
