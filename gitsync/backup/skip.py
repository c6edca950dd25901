"""Whether a pull can be skipped: nothing the CLI reads has changed since the last sync.

``wmill sync pull`` is deterministic: what it leaves in the export directory
is a function of

* every answer it gets from Windmill (the pass-through records each one),
* the CLI itself (and the node running it),
* the ``wmill.yaml`` the service generates from the scope,
* the export directory it pulls into (each file by its blob id, which the
  target's file index gives without reading files unchanged since the last
  sync: see git/file_index.py),

and what the sync then commits is a function of that directory, the path
prefix, the service's own code and the remote tip it builds on. After a
successful sync the service keeps a digest of each of these (the
``PullRecord``, a small JSON file in the target's directory). The next sync
recomputes the local ones, re-issues every recorded request with the current
request's token and compares the answers as the CLI uses them, and asks the
remote for its tip. Only if all are equal would the CLI write the same bytes
and the commit step find the same tree on the same tip: then the CLI is not
started. Any difference, or any doubt (no record, a record from a sync that
did not finish, a request that fails), runs the CLI.

The check cannot race with a change: when it does not skip, the CLI is
served exactly the answers the check fetched (the pass-through's replay), so
the next record describes what was committed. Re-issuing the requests with
this request's token also keeps the login check: a token that cannot read the
workspace is refused (401 or 403) where the record holds no refusal, and the
check stops at that first refused request and fails the sync as the CLI would
(``windmill_auth_failed``), without re-sending the rest or starting the CLI.

The record holds digests, paths and headers, never a token or content.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import WindmillAuthError, WindmillUpstreamError
from gitsync.git.file_index import FileIndex
from gitsync.secrets import Secret
from gitsync.version import CLI_VERSION, service_version
from gitsync.windmill.mirror import Snapshot
from gitsync.windmill.recorder import Exchange, Request, Upstream

log = logging.getLogger(__name__)

RECORD_FILE = "pull-record.json"
INDEX_FILE = "export-index"
# The service's own code shapes the commit (README, mirror): a new release pulls.
SERVICE_VERSION = service_version()
# 2: the export's files are digested by their Git blob ids.
_FORMAT = 2
# Caches the CLI's digest by its file's identity: 3.7 MB is not re-read per sync.
_cli_digests: dict[tuple[str, int, int, int], str] = {}


@dataclass(frozen=True)
class PullRecord:
    """What the last successful sync of a target read and left; digests only."""

    cli: str
    wmill_yaml: str
    path_prefix: str
    export: str
    tip: str
    exchanges: tuple[tuple[Request, str], ...]  # each request with its answer's digest
    service: str = ""
    # The secret scan's policy and detectors: they decide what is committed too.
    scan: str = ""
    # The items that sync held back (SECRET_SCAN=hold): still held while nothing changes.
    held: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": _FORMAT,
                "cli": self.cli,
                "wmill_yaml": self.wmill_yaml,
                "path_prefix": self.path_prefix,
                "export": self.export,
                "tip": self.tip,
                "service": self.service,
                "scan": self.scan,
                "held": list(self.held),
                "exchanges": [
                    {"request": r.to_json(), "answer": digest} for r, digest in self.exchanges
                ],
            },
            indent=1,
        )

    @classmethod
    def load(cls, path: Path) -> PullRecord | None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT:
                return None
            return cls(
                cli=str(data["cli"]),
                wmill_yaml=str(data["wmill_yaml"]),
                path_prefix=str(data["path_prefix"]),
                export=str(data["export"]),
                tip=str(data["tip"]),
                service=str(data["service"]),
                scan=str(data.get("scan", "")),
                held=tuple(dict(h) for h in data.get("held", [])),
                exchanges=tuple(
                    (Request.from_json(e["request"]), str(e["answer"])) for e in data["exchanges"]
                ),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("the pull record %s is unreadable; pulling", path)
            return None


@dataclass
class Decision:
    """The outcome of the check: skip, or why not and what to replay to the CLI."""

    skip: bool
    reason: str | None
    replay: dict[Request, Exchange] = field(default_factory=dict)
    tip: str | None = None
    # The check asked the remote for its tip (``tip``, None for no branch yet).
    tip_known: bool = False
    # Filled in after the pull: what the CLI was answered, for the next record.
    exchanges: list[Exchange] = field(default_factory=list)
    # The remote's tip, asked while the CLI pulls (see Pull.run).
    early_tip: Future[str | None] | None = None
    # On a skip: the items the last sync held back, held still.
    held: tuple[dict[str, Any], ...] = ()


class PullGate:
    """The skip check and the record of one target (its directory ``root``)."""

    def __init__(
        self,
        settings: Settings,
        root: Path,
        export_dir: Path,
        wmill_yaml: str,
        path_prefix: str,
        scan: str = "",
    ) -> None:
        self.settings = settings
        self.path = root / RECORD_FILE
        self.export_dir = export_dir
        self.index_path = root / INDEX_FILE
        # Shared with the stage step, which needs the same blob ids.
        self.index = FileIndex.load(self.index_path)
        self.wmill_yaml = _sha(wmill_yaml.encode())
        self.path_prefix = path_prefix
        self.scan = scan
        # Large answers (the workspace archive) are spooled beside the record.
        self.upstream = Upstream(
            settings.windmill_base_url, extra_ca=settings.node_extra_ca_certs, spool_dir=root
        )

    def check(
        self,
        token: Secret,
        deadline: Deadline,
        *,
        crashed: bool,
        remote_tip: Callable[[], str | None],
    ) -> Decision:
        record = PullRecord.load(self.path)
        if record is None:
            return Decision(False, "first sync")
        if crashed:
            return Decision(False, "the previous sync did not finish")
        if record.cli != cli_digest(self.settings) or record.service != SERVICE_VERSION:
            return Decision(False, "cli version changed")
        if record.wmill_yaml != self.wmill_yaml:
            return Decision(False, "scope changed")
        if record.path_prefix != self.path_prefix:
            return Decision(False, "path prefix changed")
        if record.scan != self.scan:
            return Decision(False, "secret scan policy changed")
        export, files = export_state(self.export_dir, self.index)
        if record.export != export:
            return Decision(False, "export directory changed")
        replay: dict[Request, Exchange] = {}
        changed: list[str] = []
        for request, recorded in record.exchanges:
            try:
                exchange = self.upstream.fetch_with_token(
                    request, token, deadline.for_command(self.settings.command_timeout)
                )
            except WindmillUpstreamError as exc:
                # Any doubt runs the CLI: it meets the fault itself and reports it.
                log.info("the skip check: %s", exc)
                if exc.answered:
                    return Decision(False, "windmill answer unreadable during the skip check")
                return Decision(False, "windmill unreachable during the skip check")
            if exchange.digest_once != recorded:
                _refused(exchange.status, request.endpoint)
                changed.append(request.endpoint)
            replay[request] = exchange
        if changed:
            return Decision(False, "windmill content changed: " + ", ".join(changed), replay)
        tip = remote_tip()
        if tip != record.tip:
            return Decision(False, "remote tip moved", replay, tip=tip, tip_known=True)
        if self.index.hashed:
            # Files the last sync wrote just before it ended are trusted now.
            self.index.save(self.index_path, files)
        return Decision(True, None, tip=tip, tip_known=True, held=record.held)

    def forget(self) -> None:
        """Before a pull runs: a sync that fails from here on leaves no record."""
        self.path.unlink(missing_ok=True)

    def remember(
        self,
        exchanges: list[Exchange],
        tip: str | None,
        held: tuple[dict[str, Any], ...] = (),
        seen: Snapshot | None = None,
    ) -> None:
        """The record the next sync compares with; ``seen``: this sync's last walk of the export."""
        if tip is None:
            return
        export, files = export_state(self.export_dir, self.index, seen)
        self.index.save(self.index_path, files)
        record = PullRecord(
            cli=cli_digest(self.settings),
            wmill_yaml=self.wmill_yaml,
            path_prefix=self.path_prefix,
            export=export,
            tip=tip,
            service=SERVICE_VERSION,
            scan=self.scan,
            held=held,
            exchanges=tuple(
                (e.request, e.digest_once)
                for e in sorted(exchanges, key=lambda e: (e.request.target, e.request.headers))
            ),
        )
        # Digests and paths only; the export's permissions all the same.
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(record.to_json())
        tmp.replace(self.path)


def _refused(status: int, endpoint: str) -> None:
    """A refusal the last good sync did not get: the token, not the content, changed."""
    if status == 401:
        raise WindmillAuthError(f"Windmill rejected the token (HTTP 401 to {endpoint})")
    if status == 403:
        raise WindmillAuthError(f"The Windmill token lacks permission (HTTP 403 to {endpoint})")


def cli_digest(settings: Settings) -> str:
    """The pinned version, the CLI's own bytes and the node binary that runs it."""
    parts = [CLI_VERSION]
    node = settings.node_bin
    for path in (settings.wmill_cli, _which(node)):
        try:
            st = path.stat()
        except OSError:
            parts.append(f"missing:{path}")
            continue
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        digest = _cli_digests.get(key)
        if digest is None:
            digest = _sha(path.read_bytes()) if path == settings.wmill_cli else repr(key)
            _cli_digests[key] = digest
        parts.append(digest)
    return _sha("\n".join(parts).encode())


def _which(program: str) -> Path:
    found = shutil.which(program)
    return Path(found).resolve() if found else Path(program)


def export_state(
    export_dir: Path, index: FileIndex, seen: Snapshot | None = None
) -> tuple[str, list[str]]:
    """The export's digest, and its regular files (relative paths).

    An interrupted pull leaves a marker beside it, which counts too. ``seen``:
    this sync's own walk of the export since it last changed, which gives the
    digest a walk now would (it holds plain files and directories only).
    """
    incomplete = export_dir.with_name(export_dir.name + ".incomplete")
    if incomplete.exists() or not export_dir.is_dir():
        return "incomplete", []
    entries: list[tuple[str, str]] = []
    if seen is not None:
        entries.extend((rel, "dir") for rel in seen.dirs)
        entries.extend(
            (rel, index.blob_id(rel, path, seen.stats[rel]).decode())
            for rel, path in seen.files.items()
        )
        return _export_digest(entries), list(seen.files)
    stack = [(os.fspath(export_dir), "")]
    files: list[str] = []
    while stack:
        directory, rel_dir = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_symlink():
                    entries.append((rel, "link:" + os.readlink(entry.path)))
                elif entry.is_dir():
                    entries.append((rel, "dir"))
                    stack.append((entry.path, rel))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    entries.append((rel, index.blob_id(rel, entry.path, st).decode()))
                    files.append(rel)
                else:
                    entries.append((rel, "other"))
    return _export_digest(entries), files


def _export_digest(entries: list[tuple[str, str]]) -> str:
    outer = hashlib.sha256()
    for rel, digest in sorted(entries):
        outer.update(f"{rel}\0{digest}\n".encode())
    return outer.hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
