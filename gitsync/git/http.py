"""The HTTP side of talking to a Git host: the pool, its watchdog, the client.

Kept apart from ``transport`` (what is asked of the remote, and what its
failures mean) because this part is about sockets and TLS only.
"""

from __future__ import annotations

import socket
import threading
import weakref
from typing import Any

from dulwich.client import Urllib3HttpGitClient
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool

from gitsync.deadline import Deadline
from gitsync.errors import GitError


class SmartHttpClient(Urllib3HttpGitClient):
    """dulwich's client, refusing a server that answers as dumb HTTP.

    dulwich silently falls back to the dumb protocol (dozens of plain GETs,
    no negotiation, no compare-and-swap) when ``info/refs`` comes back as
    anything but ``application/x-git-*``; we stop right after discovery.
    """

    def _discover_references(self, *args: Any, **kwargs: Any) -> Any:
        found = super()._discover_references(*args, **kwargs)
        if self.dumb:
            raise GitError(
                "the Git host does not speak Git's smart HTTP protocol "
                "(it answered as a plain file server); refusing it"
            )
        return found


class Watchdog:
    """Cuts every connection of one remote when the sync's deadline passes.

    Timeouts bound each read, but a server that trickles a byte now and then
    never trips them: at the deadline the sockets are shut down, the blocked
    read returns, and the sync ends with its timeout error instead of
    outliving it (the git binary was killed for this).
    """

    def __init__(self, deadline: Deadline) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(max(deadline.remaining(), 0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self.expired:
                self._cut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in list(self._sockets):
                self._cut(sock)

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        try:
            # The base class's shutdown: SSLSocket's would tear down the SSL
            # object under the reading thread.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def cancel(self) -> None:
        self._timer.cancel()

    def pool_class(self) -> type[HTTPSConnectionPool]:
        watchdog = self

        class WatchedConnection(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                if self.sock is not None:
                    watchdog.track(self.sock)

        class WatchedPool(HTTPSConnectionPool):
            ConnectionCls = WatchedConnection

        return WatchedPool
