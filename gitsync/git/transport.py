"""Talking to the Git host in-process: dulwich's smart-HTTP client, hardened.

This is the one place the Git token is revealed: it becomes the Basic
credential of a client built here, scoped by dulwich to the remote's own
origin. Nothing ambient is consulted. The HTTP pool is our own (the CA file
from ``GIT_SSL_CAINFO`` or the system store, verification always on, no
proxies, no retries and so no redirects, connect and read timeouts on every
request), and the client's configuration is an empty ``ConfigDict`` rather
than ``~/.gitconfig``, ``/etc/gitconfig`` or ``GIT_*`` variables
(docs: dulwich.md sections 2-4). ``dulwich.porcelain`` is never used: it
reads all of those.
"""

from __future__ import annotations

import errno
import logging
import re
import ssl
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from dulwich.client import (
    FetchPackResult,
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    InvalidWants,
)
from dulwich.config import ConfigDict
from dulwich.errors import (
    ApplyDeltaError,
    ChecksumMismatch,
    GitProtocolError,
    HangupException,
    NotGitRepository,
    ObjectFormatException,
)
from dulwich.objects import ObjectID
from dulwich.pack import UnresolvedDeltas
from dulwich.refs import Ref
from dulwich.repo import Repo

from gitsync.deadline import Deadline
from gitsync.errors import GitAuthError, GitError, GitPushRejected, SyncTimeout
from gitsync.git.http import SmartHttpClient, Watchdog
from gitsync.git.trees import local_store
from gitsync.secrets import Redactor, Secret
from gitsync.tls import git_context

log = logging.getLogger(__name__)
# dulwich logs every pkt-line at DEBUG: volume, and remote-chosen text.
logging.getLogger("dulwich").setLevel(logging.INFO)

# Basic-auth usernames providers expect beside a token (security notes c.5).
_PROVIDER_USERNAMES = {
    "github.com": "x-access-token",
    "bitbucket.org": "x-token-auth",
    "dev.azure.com": "pat",
}
CONNECT_TIMEOUT = 15.0
# A stalled read ends here (git's own http.lowSpeedTime was 60 s); the sync's
# deadline caps it further, and pack bytes are checked against it as they come.
READ_TIMEOUT = 60.0
# Push bodies up to this size go out with a Content-Length instead of chunked;
# some hosts have stalled on chunked pushes (dulwich issues #2248, #586).
_POST_BUFFER = str(64 * 1024 * 1024).encode()
_USER_AGENT = "windmill-git-sync"
_REJECTED_RACE = ("failed to update ref", "cannot lock ref", "fetch first", "non-fast-forward")
# What the host says on the side band while refusing a push (its hooks' output).
_MAX_HOST_MESSAGE = 4000
_HOST_MESSAGE_LINES = 12


def default_username(remote_url: str) -> str:
    host = (urllib.parse.urlsplit(remote_url).hostname or "").lower()
    if host in _PROVIDER_USERNAMES:
        return _PROVIDER_USERNAMES[host]
    if host == "gitlab.com" or host.startswith("gitlab."):
        return "oauth2"
    return "git"


class FetchTooLarge(GitError):
    """The remote sent more than MAX_FETCH_BYTES: refused, nothing stored."""


class RemoteMoved(Exception):
    """Raised inside a push when the remote's branch is no longer the expected base."""


@dataclass(frozen=True)
class PushOutcome:
    ok: bool
    rejected_non_fast_forward: bool = False


@dataclass
class Remote:
    """One remote repository: how to reach it, with what, until when."""

    url: str  # canonical https URL without credentials (validated by the request)
    username: str
    token: Secret
    ca_file: Path | None
    deadline: Deadline
    redactor: Redactor
    max_fetch_bytes: int

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme != "https" or parts.username or parts.password or not parts.hostname:
            # The request parser refuses these already; a credential in a URL
            # would end up wherever URLs go (logs, errors).
            raise GitError("the Git remote must be an https URL without credentials")
        self._origin = f"https://{parts.netloc}/"
        self._path = parts.path or "/"
        self._pool: urllib3.PoolManager | None = None
        self._watchdog: Watchdog | None = None

    def _client(self, what: str) -> SmartHttpClient:
        left = self.deadline.remaining()
        if left <= 0:
            raise SyncTimeout(f"the {what}", self.deadline.seconds)
        if self._pool is None:
            self._watchdog = Watchdog(self.deadline)
            self._pool = urllib3.PoolManager(
                cert_reqs=ssl.CERT_REQUIRED,
                ssl_context=git_context(self.ca_file),
                # No retries means no redirects either: a 3xx is an answer we refuse.
                retries=False,
                headers={"User-Agent": _USER_AGENT},
                num_pools=2,
                maxsize=2,
            )
            # No plain-http pool at all, and https ones whose sockets the watchdog knows.
            self._pool.pool_classes_by_scheme = {"https": self._watchdog.pool_class()}
        config = ConfigDict()
        config.set((b"http",), b"postBuffer", _POST_BUFFER)
        timeout = urllib3.Timeout(
            connect=min(CONNECT_TIMEOUT, left), read=min(READ_TIMEOUT, max(left, 0.1))
        )
        return SmartHttpClient(
            self._origin,
            pool_manager=self._pool,
            config=config,
            username=self.username,
            password=self.token.reveal(),
            timeout=timeout,  # type: ignore[arg-type]  # urllib3 takes a Timeout too
            quiet=True,
            # A thin pack's deltas name bases the server believes we hold;
            # two replicas racing on one branch met packs whose bases this
            # copy could not resolve (UnresolvedDeltas). A self-contained
            # pack costs a little more and never depends on what we hold.
            thin_packs=False,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.clear()
            self._pool = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # -- operations ----------------------------------------------------------

    def fetch(
        self,
        repo: Repo,
        wants: Callable[[Mapping[Ref, ObjectID]], list[ObjectID]],
        *,
        ref_prefix: Sequence[Ref],
        depth: int | None,
        filter_spec: bytes | None,
    ) -> dict[Ref, ObjectID]:
        """Fetch what ``wants`` picks from the advertised refs; returns those refs.

        The pack is spooled (to disk beyond a few MB) while every chunk is
        counted against MAX_FETCH_BYTES and the sync's deadline, so neither a
        huge pack nor a trickling server can hold the sync past its bounds
        (docs: dulwich.md section 8). Only a complete pack is indexed into
        the store.
        """
        received = 0

        def sink(data: bytes) -> int:
            nonlocal received
            received += len(data)
            if received > self.max_fetch_bytes:
                raise FetchTooLarge(
                    f"Git fetch failed: the Git host sent more than MAX_FETCH_BYTES "
                    f"({self.max_fetch_bytes} bytes); nothing was stored"
                )
            if self.deadline.remaining() <= 0:
                raise SyncTimeout("the Git fetch", self.deadline.seconds)
            return spool.write(data)

        def determine_wants(
            refs: Mapping[Ref, ObjectID], depth: int | None = None
        ) -> list[ObjectID]:
            return wants(refs)

        with local_store("Reading the repository"):
            walker = repo.get_graph_walker()  # sends what we have: reads every local head
        with (
            tempfile.SpooledTemporaryFile(
                max_size=4 * 1024 * 1024, dir=str(repo.object_store.path), prefix="incoming-"
            ) as spool,
            self._errors("Git fetch"),
        ):
            result: FetchPackResult = self._client("Git fetch").fetch_pack(
                self._path.encode(),
                determine_wants,
                walker,
                sink,
                depth=depth,
                ref_prefix=list(ref_prefix),
                filter_spec=filter_spec,
            )
            if spool.tell():
                spool.seek(0)
                repo.object_store.add_thin_pack(spool.read, None)
            repo.update_shallow(result.new_shallow, result.new_unshallow)
        return {k: v for k, v in result.refs.items() if v is not None}

    def push(
        self,
        repo: Repo,
        ref: Ref,
        new: ObjectID,
        expected_old: ObjectID | None,
        *,
        generate: Callable[..., Any],
    ) -> PushOutcome:
        """Point the remote's ``ref`` at ``new`` only if it still is ``expected_old``.

        The old value goes on the wire too (``old new ref``), and the server
        applies it as a locked compare-and-swap; never a force.
        """

        def update_refs(remote: dict[Ref, ObjectID]) -> dict[Ref, ObjectID]:
            if remote.get(ref) != expected_old:
                raise RemoteMoved
            return {ref: new}

        said = bytearray()

        def host_says(chunk: bytes) -> None:
            # Hooks write to the side band (GitHub's GH013 comes that way); bounded.
            if len(said) < _MAX_HOST_MESSAGE:
                said.extend(chunk[: _MAX_HOST_MESSAGE - len(said)])

        try:
            with self._errors("Git push"):
                result = self._client("Git push").send_pack(
                    self._path.encode(), update_refs, generate, progress=host_says
                )
        except RemoteMoved:
            return PushOutcome(ok=False, rejected_non_fast_forward=True)
        # A refusal does not raise: it is a status per ref (None: accepted).
        status = (result.ref_status or {}).get(ref, "no status reported")
        if status is None:
            return PushOutcome(ok=True)
        reason = self.redactor.scrub(str(status))
        if any(word in reason for word in _REJECTED_RACE):
            # Another pusher won the race between our look and our push.
            return PushOutcome(ok=False, rejected_non_fast_forward=True)
        message = _host_message(self.redactor.scrub(said.decode("utf-8", errors="replace")))
        if message or "declined" in reason or "rule" in reason.lower():
            # A rule of the host's (push protection, a pre-receive hook): the
            # same push would be refused again, so it is not retried.
            raise GitPushRejected(
                f"Git push refused by the Git host ({reason[:200]})"
                + (f": {message}" if message else "")
                + ". Nothing was pushed and the backup is unchanged. If the host names a "
                "secret (GitHub push protection, GH013), remove it from the Windmill item "
                "it points at, or allow it in the host's settings; otherwise check the "
                "repository's push rules and hooks.",
                detail=reason,
            )
        raise GitError(
            f"Git push failed: the Git host rejected the push ({reason[:200]})", detail=reason
        )

    # -- errors ----------------------------------------------------------------

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return _remote_errors(what, self.redactor, self.deadline)


# What a failing or misbehaving remote makes dulwich and urllib3 raise
# (a bad pack from the remote is its failure, not damage to our copy).
_REMOTE_FAILURES = (
    GitProtocolError,
    HTTPUnauthorized,
    HTTPProxyUnauthorized,
    NotGitRepository,
    InvalidWants,
    urllib3.exceptions.HTTPError,
    OSError,
    ApplyDeltaError,
    ChecksumMismatch,
    ObjectFormatException,
    UnresolvedDeltas,
)


@contextmanager
def _remote_errors(what: str, redactor: Redactor, deadline: Deadline) -> Iterator[None]:
    """Turns what dulwich and urllib3 raise into the service's messages."""
    try:
        yield
    except _REMOTE_FAILURES as exc:
        raise classify(exc, what, redactor, deadline) from None


def classify(exc: BaseException, what: str, redactor: Redactor, deadline: Deadline) -> Exception:
    """A message a user can act on, with the same codes and words as ever."""
    text = redactor.scrub(f"{type(exc).__name__}: {exc}")
    detail = text[-2000:]
    if deadline.remaining() <= 0:
        # Whatever broke (a read timing out, the watchdog cutting the
        # connection), the sync ran out of time.
        return SyncTimeout(f"the {what}", deadline.seconds)
    if isinstance(exc, HTTPUnauthorized) or re.search(r"unexpected http resp 40[37]", text):
        return GitAuthError(
            f"{what} failed: authentication error (check git_token and that it "
            "may write to the repository)",
            detail=detail,
        )
    if isinstance(exc, NotGitRepository):
        return GitError(f"{what} failed: repository not found", detail=detail)
    if re.search(r"unexpected http resp 30\d", text):
        return GitError(
            f"{what} failed: the Git host answered with a redirect, which is not "
            "followed; use the repository's final URL",
            detail=detail,
        )
    server_error = re.search(r"unexpected http resp (5\d\d)", text)
    if server_error:
        return GitError(
            f"{what} failed: the Git host answered HTTP {server_error.group(1)}",
            detail=detail,
            transient=True,
        )
    if "certificate" in text.lower() and "verif" in text.lower():
        return GitError(
            f"{what} failed: the Git host's TLS certificate could not be verified "
            "(set GIT_SSL_CAINFO for a private CA)",
            detail=detail,
        )
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return GitError(f"{what} failed: no space left on the service's disk", detail=detail)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return GitError(
            f"{what} failed: could not reach the Git host (it stopped answering)",
            detail=detail,
            transient=True,
        )
    if isinstance(
        exc, (HangupException, GitProtocolError, urllib3.exceptions.HTTPError, ConnectionError)
    ):
        return GitError(
            f"{what} failed: could not reach the Git host", detail=detail, transient=True
        )
    return GitError(f"{what} failed ({type(exc).__name__})", detail=detail)


def _host_message(text: str) -> str:
    """The host's own words from the side band: its error lines, without decoration."""
    lines = []
    for raw in text.replace("\r", "\n").splitlines():
        line = raw.strip()
        if line.lower().startswith("remote:"):
            line = line[len("remote:") :].strip()
        if line.lower().startswith("error:"):
            line = line[len("error:") :].strip()
        line = line.strip(" -—")
        if line and any(c.isalnum() for c in line):
            lines.append(line)
    return " / ".join(lines[:_HOST_MESSAGE_LINES])
