"""A real smart-HTTP Git server on loopback, for tests.

``git http-backend`` runs as a CGI program, one subprocess per request, behind
``http.server.ThreadingHTTPServer`` wrapped in TLS with a certificate from a
throwaway ``trustme`` CA. The server checks HTTP Basic auth against a token
that tests may rotate at run time, logs every request (never a credential),
and can misbehave on purpose (``mode``/``delay``/``redirect_to``) so the
service's failure paths can be exercised against a real git client
(shared security notes, section (a) "loopback git server" and (b) F5-F10).

Helpers that act on the bare repositories *on disk* (``clone_and_commit``,
``log``, ``read_tree``, ...) simulate humans and inspect results without going
through the network, so they never show up in the request log.

Standalone use (for the container test)::

    python -m tests.servers.git_server --root DIR --token-file F --cert-dir DIR

prints ``CA <path of the CA pem>`` then ``READY https://127.0.0.1:PORT`` and
serves until SIGTERM (SIGHUP re-reads the token file).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import io
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, cast

import trustme

# "dumb": info/refs answered as a plain file server does (text/plain), as a
# dumb-HTTP host or a misconfigured proxy would. "stall_pack": a fetch's
# response stops after ``stall_after`` bytes and then nothing, until the mode
# changes. "trickle": a fetch's response comes one byte every ``delay`` s.
MODES = ("normal", "down", "error500", "blackhole", "slow", "dumb", "stall_pack", "trickle")
SERVICES = ("git-upload-pack", "git-receive-pack")

# Repository names are test-chosen, but they become paths and URLs: keep them boring.
_REPO_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
_REPO_IN_PATH = re.compile(r"^/(.+?)\.git(?:/|$)")
_STATUS = re.compile(r"^(\d{3})(?:\s+(.*))?$")
# Headers that describe one hop; the CGI program must not decide them for us.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade"})

_CHUNK = 64 * 1024
_MAX_CGI_HEADER = 64 * 1024
_MAX_REQUEST_LINE = 64 * 1024
_HANDSHAKE_TIMEOUT = 10.0  # a client that never finishes TLS must not pin a thread
_IDLE_TIMEOUT = 60.0  # keep-alive connections git leaves open
_CGI_TIMEOUT = 300.0  # a wedged http-backend is killed eventually even without stop()
_GIT_TIMEOUT = 120.0  # every helper git command
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, slots=True)
class GitRequest:
    """One HTTP request as the server saw it. Holds no credential, by construction."""

    method: str
    path: str  # URL path, without the query string
    query: str
    repo: str | None  # "<name>" for "/<name>.git/...", else None
    service: str | None  # git-upload-pack / git-receive-pack / None
    username: str | None  # the Basic username; "<token>" if a client sent the token there
    auth_scheme: str | None  # "basic", "bearer", ... lower-cased; None without Authorization
    authorized: bool
    status: int | None  # None: never answered (blackhole)
    host: str | None  # the Host header, to see where redirected clients went
    chunked: bool  # the request body came with Transfer-Encoding: chunked
    content_encoding: str | None  # "gzip" for git's compressed negotiation bodies
    protocol: str | None  # the Git-Protocol header ("version=2"), None for protocol v0
    # git's 4-byte "0000" probe, sent before a chunked (large) request to check
    # auth and redirects; it carries no data, so it is not a push.
    probe: bool


class Symlink(bytes):
    """A symlink in a tree read by ``read_tree``; the bytes are its target.

    Never equal to plain ``bytes``, so a symlink where a file was expected (or
    the reverse) fails a dict comparison instead of passing silently.
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Symlink) and bytes(self) == bytes(other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((Symlink, bytes(self)))

    def __repr__(self) -> str:
        return f"Symlink({bytes(self)!r})"


class Gitlink(Symlink):
    """A submodule entry (mode 160000) in a tree; the bytes are the commit id."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Gitlink) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash((Gitlink, bytes(self)))

    def __repr__(self) -> str:
        return f"Gitlink({bytes(self)!r})"


# -- git on disk (no network) ------------------------------------------------


def git_env(home: Path, **extra: str) -> dict[str, str]:
    """A child environment built from scratch: nothing from the caller's git setup leaks in."""
    env = {
        "PATH": os.environ.get("PATH", _SAFE_PATH),
        "HOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        # Repositories may be owned by another uid in container tests.
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
    }
    env.update(extra)
    return env


def _git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    ok: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="git-home-") as home:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=dict(env) if env is not None else git_env(Path(home)),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    if result.returncode not in ok:
        raise RuntimeError(
            f"git {' '.join(args)} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result


def init_bare_repo(path: Path, *, branch: str = "main") -> Path:
    """An empty bare repository that accepts pushes over HTTP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _git(["init", "--quiet", "--bare", f"--initial-branch={branch}", str(path)])
    # http-backend only enables receive-pack by default when REMOTE_USER is set;
    # be explicit so the outcome never depends on that.
    _git(["--git-dir", str(path), "config", "http.receivepack", "true"])
    # Bare repos keep no reflog by default; tests use it to see every ref update.
    _git(["--git-dir", str(path), "config", "core.logAllRefUpdates", "always"])
    # Partial fetches (filter=blob:limit=...), as GitHub and GitLab allow them.
    _git(["--git-dir", str(path), "config", "uploadpack.allowFilter", "true"])
    return path


def fsck(repo: Path) -> str:
    """``git fsck --strict`` of a repository on disk; raises with git's words if it fails."""
    result = _git(["--git-dir", str(repo), "fsck", "--strict", "--no-progress"], ok=range(256))
    if result.returncode != 0:
        raise AssertionError(
            f"git fsck --strict failed: {(result.stdout + result.stderr).decode(errors='replace')}"
        )
    return result.stdout.decode()


def ref_of(repo: Path, branch: str = "main") -> str | None:
    """The commit a branch points at, None if it does not exist."""
    result = _git(
        [
            "--git-dir",
            str(repo),
            "rev-parse",
            "--verify",
            "--quiet",
            f"refs/heads/{branch}^{{commit}}",
        ],
        ok=(0, 1),
    )
    return result.stdout.decode().strip() or None


def log_of(repo: Path, branch: str = "main") -> list[str]:
    """Commit ids reachable from the branch, newest first; [] if the branch is absent."""
    if ref_of(repo, branch) is None:
        return []
    out = _git(["--git-dir", str(repo), "rev-list", f"refs/heads/{branch}", "--"]).stdout
    return out.decode().split()


def parents_of(repo: Path, commit: str) -> list[str]:
    out = _git(["--git-dir", str(repo), "rev-list", "--parents", "-n", "1", commit, "--"]).stdout
    return out.decode().split()[1:]


def read_tree_of(repo: Path, ref: str = "main") -> dict[str, bytes]:
    """Every file at a ref: path -> content (``Symlink``/``Gitlink`` for those entries)."""
    listing = _git(["--git-dir", str(repo), "ls-tree", "-r", "-z", "--full-tree", ref]).stdout
    entries: list[tuple[str, str, str]] = []  # (mode, sha, path)
    for record in listing.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, _kind, sha = meta.decode().split()
        entries.append((mode, sha, raw_path.decode("utf-8", errors="surrogateescape")))
    blobs = [sha for mode, sha, _ in entries if mode != "160000"]
    contents = _cat_blobs(repo, blobs)
    tree: dict[str, bytes] = {}
    for mode, sha, path in entries:
        if mode == "160000":
            tree[path] = Gitlink(sha.encode())
        elif mode == "120000":
            tree[path] = Symlink(contents[sha])
        else:
            tree[path] = contents[sha]
    return tree


def _cat_blobs(repo: Path, shas: Sequence[str]) -> dict[str, bytes]:
    """Blob contents through one ``cat-file --batch`` (one process, not one per file)."""
    unique = list(dict.fromkeys(shas))
    if not unique:
        return {}
    out = _git(
        ["--git-dir", str(repo), "cat-file", "--batch"],
        input="".join(f"{sha}\n" for sha in unique).encode(),
    ).stdout
    contents: dict[str, bytes] = {}
    pos = 0
    for sha in unique:
        end = out.index(b"\n", pos)
        header = out[pos:end].decode().split()
        if len(header) != 3 or header[0] != sha:
            raise RuntimeError(f"unexpected cat-file header {header!r}")
        size = int(header[2])
        contents[sha] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1  # the content is followed by a newline
    return contents


def clone_and_commit(
    repo: Path | str,
    files: Mapping[str, bytes | None],
    message: str,
    *,
    author: tuple[str, str] = ("Human", "human@example.com"),
    branch: str = "main",
    base: str | None = None,
) -> str:
    """Commit on top of ``branch`` of a bare repo on disk, as a human pushing would.

    ``files`` maps a path to new content, or to None to delete it. If ``branch``
    does not exist yet it starts from the branch ``base``, or as a root commit
    when ``base`` is None. Goes through a temporary clone and a real (local)
    push, so server-side hooks run. Returns the new commit id.
    """
    bare = Path(repo)
    if not (bare / "HEAD").is_file():
        raise ValueError(f"not a bare repository: {bare}")
    with tempfile.TemporaryDirectory(prefix="human-") as tmp:
        home = Path(tmp) / "home"
        home.mkdir()
        work = Path(tmp) / "work"
        name, email = author
        env = git_env(
            home,
            GIT_AUTHOR_NAME=name,
            GIT_AUTHOR_EMAIL=email,
            GIT_COMMITTER_NAME=name,
            GIT_COMMITTER_EMAIL=email,
        )
        _git(["clone", "--quiet", "--no-checkout", "--", str(bare), str(work)], env=env)
        start = branch if ref_of(bare, branch) is not None else base
        if start is None:
            # A root commit: the first one in an empty repository, or an orphan branch.
            _git(["symbolic-ref", "HEAD", f"refs/heads/{branch}"], cwd=work, env=env)
        else:
            _git(["checkout", "--quiet", "-B", branch, f"origin/{start}"], cwd=work, env=env)
        for rel, content in files.items():
            target = work / rel
            if content is None:
                _git(
                    ["rm", "--quiet", "--cached", "--ignore-unmatch", "--", rel], cwd=work, env=env
                )
                if target.exists() or target.is_symlink():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            _git(["add", "--", rel], cwd=work, env=env)
        _git(
            ["commit", "--quiet", "--allow-empty", "-F", "-"],
            cwd=work,
            env=env,
            input=message.encode(),
        )
        commit = _git(["rev-parse", "HEAD"], cwd=work, env=env).stdout.decode().strip()
        _git(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], cwd=work, env=env)
    return commit


# -- the server --------------------------------------------------------------


class _TLSServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that does the TLS handshake in the per-connection thread.

    Wrapping the listening socket would run every handshake in the accept loop,
    so one client that connects and stays silent would stall all the others.
    """

    daemon_threads = True  # stop() joins connections itself, with a bound
    request_queue_size = 128  # many parallel git clients; the default backlog is 5
    allow_reuse_address = True

    def __init__(self, owner: GitHttpServer, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        owner = self.owner
        raw: socket.socket = request
        if owner.mode == "down":
            # Accept, then hang up before TLS: the client sees a dead server.
            owner._note_dropped()
            raw.close()
            return
        conn: ssl.SSLSocket | None = None
        with owner._track_connection(raw):
            try:
                raw.settimeout(_HANDSHAKE_TIMEOUT)
                conn = owner._ssl.wrap_socket(raw, server_side=True)
                owner._replace_tracked(raw, conn)
                _Handler(conn, client_address, self)
            except (OSError, ssl.SSLError):
                pass  # handshake failures and clients going away are the client's problem
            finally:
                if conn is not None:
                    with contextlib.suppress(OSError):
                        conn.close()
                raw.close()

    def shutdown_request(self, request: Any) -> None:
        # finish_request already closed both sockets; the base class would
        # try shutdown() on a socket whose descriptor moved into the SSL socket.
        with contextlib.suppress(OSError):
            request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr for every broken client.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, as git expects
    server_version = "loopback-git"
    sys_version = ""
    timeout = _IDLE_TIMEOUT
    server: _TLSServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the structured request log replaces stderr chatter

    def handle_expect_100(self) -> bool:
        # Decide ourselves whether the client may send the body: never tell it to
        # upload a pack we are going to refuse (401, 500, redirect).
        return True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # -- request handling ----------------------------------------------------

    def _serve(self) -> None:
        owner = self.server.owner
        split = urllib.parse.urlsplit(self.path)
        path, query = split.path, split.query
        repo_match = _REPO_IN_PATH.match(path)
        service = _service_of(path, query)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        content_length = self.headers.get("Content-Length")
        has_body = chunked or (
            content_length is not None and content_length.strip() not in ("", "0")
        )
        probe = not chunked and self.command == "POST" and (content_length or "").strip() == "4"
        scheme, username, authorized = owner._check_auth(self.headers.get("Authorization"))

        def record(status: int | None) -> None:
            owner._record(
                GitRequest(
                    method=self.command,
                    path=path,
                    query=query,
                    repo=repo_match.group(1) if repo_match else None,
                    service=service,
                    username=username,
                    auth_scheme=scheme,
                    authorized=authorized,
                    status=status,
                    host=self.headers.get("Host"),
                    chunked=chunked,
                    content_encoding=self.headers.get("Content-Encoding"),
                    protocol=self.headers.get("Git-Protocol"),
                    probe=probe,
                )
            )

        # Precedence: blackhole, then the slow delay (applies to every answer),
        # then error500, then redirect, then auth, then the real backend.
        if owner.mode == "blackhole":
            record(None)
            owner._wait_while_blackholed()
            self.close_connection = True  # released by stop() or a mode change: hang up
            return
        if owner.mode == "slow":
            owner._sleep(owner.delay)
        if owner.mode == "error500":
            record(500)
            self._simple(500, b"induced failure\n", has_body)
            return
        redirect = owner.redirect_to
        if redirect is not None:
            record(302)
            self._simple(302, b"moved\n", has_body, {"Location": redirect.rstrip("/") + self.path})
            return
        if owner.mode == "dumb" and self.command == "GET" and path.endswith("/info/refs"):
            record(200)
            self._simple(200, owner._dumb_refs(repo_match.group(1) if repo_match else ""), False)
            return
        if not authorized:
            record(401)
            self._simple(
                401,
                b"authentication required\n",
                has_body,
                {"WWW-Authenticate": 'Basic realm="git"'},
            )
            return
        hook = owner.before_backend
        if hook is not None:
            hook(self.command, path, service)
        if has_body and self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(100)
            self.end_headers()
        self._run_backend(path, query, username, chunked, record)

    def _simple(
        self, status: int, body: bytes, unread_body: bool, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if unread_body:
            # The request body was never read, so the connection cannot be reused.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self, chunked: bool, sink: IO[bytes]) -> None:
        """Copy the request body (de-chunked, still content-encoded) into ``sink``.

        The whole body is spooled before the backend starts. Smart HTTP is
        request/response, so nothing is lost, and it means a single thread
        does all reads and writes on the TLS socket (OpenSSL objects must not
        be read and written from two threads at once).
        """
        if chunked:
            while True:
                line = self.rfile.readline(_MAX_REQUEST_LINE)
                if not line.endswith(b"\n"):
                    raise ConnectionError("bad chunk header")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Trailers (if any) end with an empty line.
                    while self.rfile.readline(_MAX_REQUEST_LINE) not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self._copy(size, sink)
                if self.rfile.readline(_MAX_REQUEST_LINE) not in (b"\r\n", b"\n"):
                    raise ConnectionError("bad chunk terminator")
        else:
            self._copy(int(self.headers.get("Content-Length") or 0), sink)

    def _copy(self, size: int, sink: IO[bytes]) -> None:
        while size > 0:
            data = self.rfile.read(min(size, _CHUNK))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            sink.write(data)
            size -= len(data)

    def _run_backend(
        self,
        path: str,
        query: str,
        username: str | None,
        chunked: bool,
        record: Any,
    ) -> None:
        owner = self.server.owner
        with tempfile.TemporaryFile() as body, tempfile.TemporaryFile() as errors:
            try:
                if self.command == "POST":
                    self._read_body(chunked, body)
            except (ConnectionError, ValueError, OSError):
                self.close_connection = True
                return
            length = body.tell()
            body.seek(0)
            env = owner._cgi_env(
                method=self.command,
                path=path,
                query=query,
                content_type=self.headers.get("Content-Type"),
                content_length=length if self.command == "POST" else None,
                content_encoding=self.headers.get("Content-Encoding"),
                git_protocol=self.headers.get("Git-Protocol"),
                remote_user=username,
                remote_addr=str(self.client_address[0]),
                server_protocol=self.request_version,
            )
            proc = subprocess.Popen(
                ["git", "http-backend"],
                stdin=body,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                cwd=owner._home,
                start_new_session=True,
            )
            # A wedged backend is killed eventually even if stop() never comes.
            watchdog = threading.Timer(_CGI_TIMEOUT, _killpg, (proc,))
            watchdog.daemon = True
            watchdog.start()
            fetching = self.command == "POST" and path.endswith("/git-upload-pack")
            with owner._track_process(proc):
                try:
                    self._relay(proc, record, fetching)
                finally:
                    watchdog.cancel()
                    _reap(proc)
            errors.seek(0)
            owner._note_backend_stderr(errors.read(8192))

    def _relay(self, proc: subprocess.Popen[bytes], record: Any, fetching: bool = False) -> None:
        """Translate the CGI response into an HTTP one, streaming the body."""
        owner = self.server.owner
        # Popen makes a BufferedReader for stdout=PIPE (bufsize=-1); read1 needs that type.
        stdout = cast(io.BufferedReader, proc.stdout)
        status, reason, headers = _read_cgi_headers(stdout)
        if status is None:
            record(502)
            self._simple(502, b"backend produced no response\n", False)
            return
        # Logged before the answer goes out, so a client that has finished
        # reading can rely on the log being complete.
        record(status)
        self.send_response(status, reason)
        length_known = False
        for key, value in headers:
            if key.lower() in _HOP_BY_HOP:
                continue
            length_known |= key.lower() == "content-length"
            self.send_header(key, value)
        use_chunks = not length_known and self.request_version == "HTTP/1.1"
        if use_chunks:
            self.send_header("Transfer-Encoding", "chunked")
        elif not length_known:
            self.send_header("Connection", "close")  # HTTP/1.0: EOF ends the body
            self.close_connection = True
        self.end_headers()
        sent = 0
        while True:
            data = stdout.read1(_CHUNK)
            if not data:
                break
            if fetching and owner.mode == "stall_pack":
                data = data[: max(owner.stall_after - sent, 0)]
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if use_chunks else data)
                    self.wfile.flush()
                    sent += len(data)
                if sent >= owner.stall_after:
                    owner._wait_while("stall_pack")
                    self.close_connection = True
                    return
                continue
            if fetching and owner.mode == "trickle":
                for byte in data:
                    if owner.mode != "trickle" or owner._stopping.is_set():
                        self.close_connection = True
                        return
                    one = bytes([byte])
                    self.wfile.write(b"1\r\n%s\r\n" % one if use_chunks else one)
                    self.wfile.flush()
                    owner._sleep(owner.delay)
                continue
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if use_chunks else data)
        if use_chunks:
            self.wfile.write(b"0\r\n\r\n")


def _service_of(path: str, query: str) -> str | None:
    for service in SERVICES:
        if path.endswith("/" + service):
            return service
    params = urllib.parse.parse_qs(query)
    for value in params.get("service", []):
        if value in SERVICES:
            return value
    return None


def _read_cgi_headers(stream: io.BufferedReader) -> tuple[int | None, str, list[tuple[str, str]]]:
    status: int | None = None
    reason = ""
    headers: list[tuple[str, str]] = []
    seen = 0
    while True:
        line = stream.readline(_MAX_CGI_HEADER)
        if not line:
            return None, "", []  # the backend died before finishing its headers
        seen += len(line)
        if seen > _MAX_CGI_HEADER:
            return None, "", []
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return status or 200, reason, headers
        key, _, value = text.partition(":")
        value = value.strip()
        if key.lower() == "status":
            match = _STATUS.match(value)
            if match:
                status, reason = int(match.group(1)), match.group(2) or ""
        else:
            headers.append((key.strip(), value))


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    # The backend runs in its own session: this also reaches the upload-pack or
    # receive-pack it started, which proc.kill() would orphan.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a backend; kill its whole session if it outlives its client."""
    if proc.stdout is not None:
        proc.stdout.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _killpg(proc)
        proc.wait(timeout=10)


class GitHttpServer:
    """HTTPS smart-HTTP Git server on loopback, backed by ``git http-backend``.

    Thread-safe: ``token``, ``mode``, ``delay`` and ``redirect_to`` may be changed
    while requests are in flight; each request reads them once when it arrives
    (a blackholed request also wakes up when ``mode`` changes).
    """

    def __init__(self, root: Path, *, token: str, ca: trustme.CA, host: str = "127.0.0.1") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.host = host
        self.port = 0
        self.delay = 0.0
        self.redirect_to: str | None = None
        self.stall_after = 0  # bytes of a fetch's response sent before "stall_pack" stalls
        # Called as (method, path, service) just before the backend answers an
        # authorized request: lets a test act at an exact protocol step.
        self.before_backend: Callable[[str, str, str | None], None] | None = None
        self.dropped_connections = 0  # connections hung up on in "down" mode
        self._mode = "normal"
        self._lock = threading.Lock()
        self._mode_changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._requests: list[GitRequest] = []
        self._backend_stderr: list[bytes] = []
        self._connections: dict[int, socket.socket] = {}
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._idle = threading.Condition(self._lock)
        self._httpd: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self._home = tempfile.mkdtemp(prefix="git-http-home-")  # empty HOME for the backend
        names = list(dict.fromkeys([host, "127.0.0.1", "localhost"]))
        cert = ca.issue_cert(*names)
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        cert.configure_cert(self._ssl)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> GitHttpServer:
        if self._httpd is not None:
            raise RuntimeError("already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._httpd = _TLSServer(self, (self.host, 0), family)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="git-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._httpd is None:
            return
        with self._lock:
            self._stopping.set()
            self._mode_changed.notify_all()  # release blackholed requests
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for conn in self._connections.values():
                # Unblocks threads waiting on idle keep-alive connections. The base
                # class method: SSLSocket.shutdown would drop its SSL object under
                # the reading thread's feet.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_RDWR)
            for proc in self._processes:
                _killpg(proc)
            self._idle.wait_for(lambda: not self._connections, timeout)
        self._httpd = None
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> GitHttpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- knobs -------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {value!r}")
        with self._lock:
            self._mode = value
            self._mode_changed.notify_all()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def url(self, repo: str) -> str:
        return f"{self.base_url}/{_check_repo_name(repo)}.git"

    # -- repositories --------------------------------------------------------------

    def repo_path(self, repo: str) -> Path:
        return self.root / f"{_check_repo_name(repo)}.git"

    def create_repo(self, repo: str, *, branch: str = "main") -> Path:
        return init_bare_repo(self.repo_path(repo), branch=branch)

    def _resolve(self, repo: str | Path) -> Path:
        """A repo name, one of our URLs, or a path -> the bare repository on disk."""
        if isinstance(repo, Path):
            return repo
        if repo.startswith(("https://", "http://")):
            match = _REPO_IN_PATH.match(urllib.parse.urlsplit(repo).path)
            if not match:
                raise ValueError(f"not a repository URL of this server: {repo}")
            return self.repo_path(match.group(1))
        if repo.startswith("/"):
            return Path(repo)
        return self.repo_path(repo)

    def clone_and_commit(
        self,
        repo: str | Path,
        files: Mapping[str, bytes | None],
        message: str,
        *,
        author: tuple[str, str] = ("Human", "human@example.com"),
        branch: str = "main",
        base: str | None = None,
    ) -> str:
        return clone_and_commit(
            self._resolve(repo), files, message, author=author, branch=branch, base=base
        )

    def log(self, repo: str | Path, branch: str = "main") -> list[str]:
        return log_of(self._resolve(repo), branch)

    def ref(self, repo: str | Path, branch: str = "main") -> str | None:
        return ref_of(self._resolve(repo), branch)

    def read_tree(self, repo: str | Path, ref: str = "main") -> dict[str, bytes]:
        return read_tree_of(self._resolve(repo), ref)

    def parents(self, repo: str | Path, commit: str) -> list[str]:
        return parents_of(self._resolve(repo), commit)

    def parent_of(self, repo: str | Path, commit: str) -> str | None:
        """The first parent of a commit, None for a root commit."""
        parents = self.parents(repo, commit)
        return parents[0] if parents else None

    def fsck(self, repo: str | Path) -> str:
        return fsck(self._resolve(repo))

    def cat_commit(self, repo: str | Path, commit: str) -> bytes:
        """The raw commit object, to check author bytes exactly."""
        return _git(["--git-dir", str(self._resolve(repo)), "cat-file", "commit", commit]).stdout

    # -- request log -----------------------------------------------------------------

    @property
    def requests(self) -> list[GitRequest]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def receive_pack_posts(
        self, repo: str | None = None, *, include_probes: bool = False
    ) -> list[GitRequest]:
        """Push attempts: POSTs to git-receive-pack, whatever their outcome.

        git precedes a large (chunked) push with a data-less probe POST; that is
        left out unless ``include_probes``, so one push is one entry.
        """
        name = None if repo is None else _check_repo_name(repo)
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and r.service == "git-receive-pack"
            and (name is None or r.repo == name)
            and (include_probes or not r.probe)
        ]

    @property
    def backend_stderr(self) -> list[bytes]:
        """What http-backend printed (bounded), for debugging failed tests."""
        with self._lock:
            return list(self._backend_stderr)

    # -- internals used by the handler -------------------------------------------------

    def _check_auth(self, header: str | None) -> tuple[str | None, str | None, bool]:
        """(scheme, username, authorized) for an Authorization header value."""
        if header is None:
            return None, None, False
        scheme, _, credentials = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme != "basic":
            return scheme[:20], None, False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return scheme, None, False
        username, sep, password = decoded.partition(":")
        token = self.token  # read once: it may be rotated concurrently
        if token and token in username:
            username = "<token>"  # a client put the secret in the wrong field: never log it
        if not sep or not username or not password or not username.isprintable():
            return scheme, username or None, False
        ok = hmac.compare_digest(password.encode(), token.encode())
        return scheme, username, ok

    def _cgi_env(
        self,
        *,
        method: str,
        path: str,
        query: str,
        content_type: str | None,
        content_length: int | None,
        content_encoding: str | None,
        git_protocol: str | None,
        remote_user: str | None,
        remote_addr: str,
        server_protocol: str,
    ) -> dict[str, str]:
        # Built from scratch: nothing from the test process (tracing, config) leaks in.
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": method,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "REMOTE_ADDR": remote_addr,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": server_protocol,
            "PATH": os.environ.get("PATH", _SAFE_PATH),
            "HOME": self._home,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
        }
        if content_type:
            env["CONTENT_TYPE"] = content_type
        if content_length is not None:
            env["CONTENT_LENGTH"] = str(content_length)
        if content_encoding:
            env["HTTP_CONTENT_ENCODING"] = content_encoding
        if git_protocol:
            env["GIT_PROTOCOL"] = git_protocol
        if remote_user:
            env["REMOTE_USER"] = remote_user
        return env

    def _record(self, request: GitRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _note_dropped(self) -> None:
        with self._lock:
            self.dropped_connections += 1

    def _note_backend_stderr(self, text: bytes) -> None:
        if text:
            with self._lock:
                self._backend_stderr = [*self._backend_stderr[-99:], text]

    def _wait_while_blackholed(self) -> None:
        self._wait_while("blackhole")

    def _wait_while(self, mode: str) -> None:
        with self._lock:
            self._mode_changed.wait_for(lambda: self._stopping.is_set() or self._mode != mode)

    def _dumb_refs(self, repo: str) -> bytes:
        """info/refs as a dumb server serves it: "<id>\t<ref>" lines, text/plain."""
        try:
            tip = ref_of(self.repo_path(repo))
        except ValueError:
            tip = None
        return f"{tip}\trefs/heads/main\n".encode() if tip else b""

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # stop() cuts the delay short

    @contextlib.contextmanager
    def _track_connection(self, conn: socket.socket) -> Iterator[None]:
        key = id(conn)
        with self._lock:
            self._connections[key] = conn
        try:
            yield
        finally:
            with self._lock:
                self._connections.pop(key, None)
                self._idle.notify_all()

    def _replace_tracked(self, old: socket.socket, new: socket.socket) -> None:
        with self._lock:
            if id(old) in self._connections:
                self._connections[id(old)] = new

    @contextlib.contextmanager
    def _track_process(self, proc: subprocess.Popen[bytes]) -> Iterator[None]:
        with self._lock:
            self._processes.add(proc)
        try:
            yield
        finally:
            with self._lock:
                self._processes.discard(proc)


def _check_repo_name(repo: str) -> str:
    if not _REPO_NAME.match(repo) or ".." in repo or repo.endswith(".git"):
        raise ValueError(f"bad repository name: {repo!r}")
    return repo


# -- standalone ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--root", type=Path, required=True, help="directory holding <repo>.git")
    parser.add_argument("--token-file", type=Path, required=True, help="re-read on SIGHUP")
    parser.add_argument("--cert-dir", type=Path, required=True, help="ca.pem is written here")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--create-repo", action="append", default=[], metavar="NAME")
    args = parser.parse_args(argv)

    token_file: Path = args.token_file

    def read_token() -> str:
        return token_file.read_text().strip()

    ca = trustme.CA()
    args.cert_dir.mkdir(parents=True, exist_ok=True)
    ca_pem = args.cert_dir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    server = GitHttpServer(args.root, token=read_token(), ca=ca, host=args.host)
    for name in args.create_repo:
        if not server.repo_path(name).exists():
            server.create_repo(name)
    done = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        done.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        server.token = read_token()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    with server:
        # READY comes last: once it is printed, the CA file and repos exist.
        print(f"CA {ca_pem.resolve()}", flush=True)
        print(f"READY {server.base_url}", flush=True)
        while not done.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
