"""A loopback pass-through between the ``wmill`` CLI and Windmill that records what it reads.

A pull's output is a function of what the CLI reads from Windmill (and of its
version, its ``wmill.yaml`` and the directory it pulls into). To know next time
whether a pull could write anything new, the service must know exactly which
requests the CLI made and what it was answered: guessing the list from the
protocol notes would miss a request a later CLI adds. So the CLI's
``BASE_INTERNAL_URL`` points here for the run, and every exchange is kept, in
memory, as the CLI saw it (bodies beyond a few MB spooled to a file in the
target's directory: concurrent syncs must not each hold a workspace archive).

In replay mode the pass-through answers from exchanges the service fetched
itself just before (the skip check), so what the CLI writes, and what gets
committed, is exactly what was compared; a request the replay does not hold
goes to Windmill live and is recorded like any other.

Guards: it listens on 127.0.0.1 only, every path must start with a secret
drawn for this run (it reaches only the CLI's environment), and only GETs
under ``api/`` are served: a pull makes nothing else. The token is forwarded
from the CLI's own request and never kept.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import logging
import secrets
import struct
import tarfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO

from gitsync.errors import WindmillUpstreamError
from gitsync.secrets import Secret
from gitsync.windmill.api import windmill_opener
from gitsync.windmill.body import CHUNK as _CHUNK
from gitsync.windmill.body import SPOOL_BYTES, Body

log = logging.getLogger(__name__)

# Request headers that can change Windmill's answer and carry no secret; they
# are part of what identifies a request (and are sent again by the skip check).
# Authorization is forwarded but never recorded; Accept-Encoding is not
# forwarded, so bodies arrive uncompressed and their digests mean one thing.
RECORDED_HEADERS = ("accept", "content-type", "x-windmill-client")
# Response headers passed back to the CLI; hop-by-hop ones are ours to set.
_RESPONSE_HEADERS = ("content-type", "content-disposition", "cf-mitigated")


@dataclass(frozen=True)
class Request:
    """One request of the CLI, without its token: what is re-issued and compared."""

    method: str
    target: str  # relative to the base URL, "api/..." with its query
    headers: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, object]:
        return {"method": self.method, "target": self.target, "headers": list(self.headers)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Request:
        headers = data["headers"]
        if not isinstance(headers, list):
            raise ValueError("headers")
        return cls(
            str(data["method"]),
            str(data["target"]),
            tuple((str(k), str(v)) for k, v in headers),
        )

    @property
    def endpoint(self) -> str:
        """The path without the workspace and query, for reasons a user reads."""
        path = self.target.split("?", 1)[0].removeprefix("api/")
        if path.startswith("w/"):
            path = path.split("/", 2)[2] if path.count("/") >= 2 else path
        return path


# How often the pass-through's serving loop checks whether it is to stop.
_POLL_SECONDS = 0.02


@dataclass(frozen=True, eq=False)
class Exchange:
    request: Request
    status: int
    content_type: str
    body: Body  # workspace content, ciphertext: never logged, spooled beyond a few MB
    headers: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def digest_once(self) -> str:
        # The check and the record both need it: the archive is read once.
        return self.digest()

    @functools.cached_property
    def archive_entries(self) -> list[tuple[str, str]] | None:
        """Each entry of a zip answer with its content's sha256, in archive order; None if no zip.

        Read once, for the digest, the skip check's narrowing plan and the
        narrowed-pull state alike.
        """
        return zip_entries(self.body)

    def digest(self) -> str:
        """A digest of the answer as the CLI uses it.

        Windmill builds the workspace archive on each request, and its bytes
        may carry build times when nothing changed; the CLI only uses the
        entries' names and contents, so that is what the digest covers.
        """
        if 200 <= self.status < 300 and self.request.endpoint == "workspaces/tarball":
            content = _sha(archive_digest(self.body, self.archive_entries).encode())
        else:
            content = _stream_sha(self.body.chunks())
        material = json.dumps([self.status, self.content_type.lower(), content])
        return _sha(material.encode())


def zip_entries(body: Body) -> list[tuple[str, str]] | None:
    """(name, digest of the content) of each entry of a zip, in order; None if it is no zip.

    The digest is of the entry as stored: its method, CRC, size and stored
    (compressed) bytes, read straight from the archive. The same stored bytes
    always inflate to the same content, so an unchanged digest is an unchanged
    entry; content stored otherwise (another compressor) only reads as
    changed, which costs a larger pull, never a missed change. Inflating and
    hashing every entry instead was most of the skip check's own time at
    5000 items (12,800 entries). Damaged entries are found where they are
    inflated: by the narrowed pull's reader, and by the CLI.
    """
    zf = body.as_zip()
    if zf is None:
        return None
    # An archive kept in memory is read at once; one spooled to disk, piece by piece.
    whole = memoryview(body.read_all()) if body.size <= SPOOL_BYTES else None

    def read_at(offset: int, size: int) -> bytes | memoryview:
        if whole is not None:
            return whole[offset : offset + size]
        return body.read_at(offset, size)

    entries = []
    try:
        for info in zf.infolist():
            header = read_at(info.header_offset, _LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size:
                return None
            magic, *_, name_length, extra_length = _LOCAL_HEADER.unpack(header)
            if magic != _LOCAL_MAGIC:
                return None
            start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
            digest = hashlib.sha256(b"%d %d %d\0" % (info.compress_type, info.CRC, info.file_size))
            end = start + info.compress_size
            while start < end:  # in chunks: one entry may be large
                stored = read_at(start, min(_CHUNK, end - start))
                if not stored:
                    return None  # the entry runs past the end of the answer
                digest.update(stored)
                start += len(stored)
            entries.append((info.filename, digest.hexdigest()))
    except (ValueError, OSError, struct.error):
        return None
    return entries


# A zip entry's local header (APPNOTE 4.3.7): magic ... name and extra lengths.
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")
_LOCAL_MAGIC = b"PK\x03\x04"


def archive_digest(body: Body, zipped: list[tuple[str, str]] | None = None) -> str:
    """Sorted entry names and content digests of a zip (or tar); the raw bytes otherwise.

    ``zipped``: the zip's entries (``zip_entries``), when they were read already.
    """
    entries = zipped if zipped is not None else zip_entries(body)
    if entries is None:
        entries = []
        try:
            with tarfile.open(fileobj=body.reader()) as tf:
                for member in tf:
                    data = tf.extractfile(member)
                    content = _member_sha(data) if data is not None else _sha(b"")
                    entries.append((f"{member.name}:{member.type!r}", content))
        except (tarfile.TarError, ValueError, OSError, EOFError, zlib.error):
            return "raw:" + _stream_sha(body.chunks())
    return _sha(json.dumps(sorted(entries)).encode())


def _member_sha(member: IO[bytes]) -> str:
    with member:
        return _stream_sha(iter(lambda: member.read(_CHUNK), b""))


def _stream_sha(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Upstream:
    """Windmill itself, asked with a given token; no redirects, a timeout always."""

    def __init__(
        self, base_url: str, *, extra_ca: Path | None, spool_dir: Path | None = None
    ) -> None:
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self._opener = windmill_opener(extra_ca)
        self.spool_dir = spool_dir

    def fetch(
        self,
        request: Request,
        authorization: str | None,
        timeout: float,
        user_agent: str = "windmill-git-sync",
    ) -> Exchange:
        """The answer to ``request``, read to its end.

        Any failure to get one (no answer; or a broken one: truncated, a bad
        status line, an overlong header) raises ``WindmillUpstreamError``:
        the one error of this module's callers to handle.
        """
        headers = dict(request.headers)
        if authorization:
            headers["Authorization"] = authorization
        # The CLI's own when it is the CLI asking: Windmill's logs tell the two apart.
        headers["User-Agent"] = user_agent
        http_request = urllib.request.Request(  # noqa: S310 - http(s) base URL, checked in config
            self.base + request.target, headers=headers, method=request.method
        )
        answered = False
        try:
            try:
                response = self._opener.open(http_request, timeout=max(timeout, 1.0))
            except urllib.error.HTTPError as exc:
                response = exc
            answered = True
            with response:
                body = Body(self.spool_dir)
                while chunk := response.read(_CHUNK):
                    body.write(chunk)
                promised = response.headers.get("content-length")
                if promised is not None and promised.isdigit() and body.size < int(promised):
                    # read(n) ends quietly where the connection did: only the
                    # promised length tells a cut answer from a whole one.
                    raise http.client.IncompleteRead(b"", int(promised) - body.size)
                kept = tuple(
                    (name, value)
                    for name in _RESPONSE_HEADERS
                    if (value := response.headers.get(name)) is not None
                )
                return Exchange(
                    request,
                    int(response.status),
                    response.headers.get("content-type", ""),
                    body,
                    kept,
                )
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # OSError: refused, reset, timed out (URLError included); the
            # others: a malformed or truncated answer, which is no OSError.
            broken = answered or not isinstance(exc, OSError)
            what = "could not be read to its end" if broken else "could not be reached"
            raise WindmillUpstreamError(
                f"Windmill's answer to {request.endpoint} {what} ({type(exc).__name__})"
                if broken
                else f"Windmill could not be reached ({type(exc).__name__})",
                answered=broken,
            ) from None

    def fetch_with_token(self, request: Request, token: Secret, timeout: float) -> Exchange:
        return self.fetch(request, f"Bearer {token.reveal()}", timeout)


class PassThrough:
    """The CLI's Windmill for one sync: see the module docstring."""

    def __init__(self, upstream: Upstream, replay: dict[Request, Exchange], timeout: float) -> None:
        self.upstream = upstream
        self.timeout = timeout
        self._replay = dict(replay)
        self._secret = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        self._exchanges: dict[Request, Exchange] = {}
        self._live: list[Request] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the pass-through is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/{self._secret}/"

    @property
    def secret(self) -> Secret:
        return Secret(self._secret)

    def begin_attempt(self, first: bool) -> None:
        """Forget the last attempt; a retry reads Windmill live, or it could not recover."""
        with self._lock:
            self._exchanges.clear()
            self._live.clear()
            if not first:
                self._replay.clear()

    def exchanges(self) -> list[Exchange]:
        """What the CLI was answered in this attempt, one per distinct request."""
        with self._lock:
            return list(self._exchanges.values())

    def live_requests(self) -> list[Request]:
        with self._lock:
            return list(self._live)

    @contextmanager
    def running(self) -> Iterator[PassThrough]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        # shutdown() waits for the serving loop to look at its flag, once per
        # poll interval: the default half second was a fixed cost of every pull.
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name="wgs-passthrough",
            daemon=True,
        )
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
            self._server = None

    def _answer(
        self, request: Request, authorization: str | None, user_agent: str | None
    ) -> Exchange | None:
        with self._lock:
            replayed = self._replay.get(request)
        if replayed is not None:
            exchange = replayed
        else:
            try:
                exchange = self.upstream.fetch(
                    request, authorization, self.timeout, user_agent or "windmill-git-sync"
                )
            except WindmillUpstreamError as exc:
                log.warning("for the CLI: %s", exc)
                if not exc.answered:
                    return None  # the CLI meets the network error it would have met
                # A broken answer: the CLI gets a clean one saying so.
                return Exchange(request, 502, "text/plain", Body.of(f"Bad gateway: {exc}".encode()))
            with self._lock:
                self._live.append(request)
        with self._lock:
            self._exchanges[request] = exchange
        return exchange

    def _accepts(self, path: str) -> str | None:
        prefix = f"/{self._secret}/"
        if not secrets.compare_digest(path[: len(prefix)].encode(), prefix.encode()):
            return None
        rest = path[len(prefix) :]
        return rest if rest.startswith("api/") else None


def _handler_for(owner: PassThrough) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # the path holds the run's secret

        def do_GET(self) -> None:
            target = owner._accepts(self.path)
            if target is None:
                self._plain(404, b"Not found")
                return
            length = int(self.headers.get("content-length") or 0)
            if length:
                self._plain(400, b"Bad request: a pull sends no body")
                return
            request = Request(
                "GET",
                target,
                tuple(
                    (name, value)
                    for name in RECORDED_HEADERS
                    if (value := self.headers.get(name)) is not None
                ),
            )
            exchange = owner._answer(
                request, self.headers.get("authorization"), self.headers.get("user-agent")
            )
            if exchange is None:
                # Windmill is down: the CLI must see a network error, as it would.
                self.close_connection = True
                return
            self.send_response(exchange.status)
            for name, value in exchange.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(exchange.body.size))
            self.end_headers()
            for chunk in exchange.body.chunks():
                self.wfile.write(chunk)

        def _refuse(self) -> None:
            self._plain(404, b"Not found")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _refuse

        def _plain(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
