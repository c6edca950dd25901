"""Walking history and writing a tree out: what ``/history`` and ``/restore`` read.

Everything here reads the service's own copy (no network). ``export`` is the
only code that turns a tree from the remote into files on disk, so it writes
regular files only, under names it has checked: no ``..``, no separators,
no ``.git`` in any spelling, no control characters (NUL, CR, LF, ...), and
never a symbolic link or a submodule.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, Commit, ObjectID, Tag, Tree

from gitsync.errors import GitError
from gitsync.git import trees
from gitsync.git.trees import Lookup

_log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]{7,40}")


def object_id(sha: str) -> ObjectID:
    return ObjectID(sha.encode("ascii"))


def _commit(get: Lookup, sha: ObjectID) -> Commit:
    obj = get(sha)
    if not isinstance(obj, Commit):
        raise KeyError(sha)
    return obj


def history(get: Lookup, start: ObjectID, shallow: set[ObjectID]) -> Iterator[Commit]:
    """Every commit reachable from ``start``, stopping where a shallow fetch cut history.

    A missing commit that is not at such an edge raises KeyError: damage.
    """
    seen = {start}
    pending = [start]
    while pending:
        commit = _commit(get, pending.pop())
        yield commit
        if commit.id in shallow:
            continue
        for parent in commit.parents:
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)


def reaches(get: Lookup, start: ObjectID, target: ObjectID) -> bool | None:
    """Is ``target`` in the history of ``start``? None: the history here is incomplete."""
    seen = {start}
    pending = [start]
    incomplete = False
    while pending:
        sha = pending.pop()
        if sha == target:
            return True
        try:
            commit = _commit(get, sha)
        except KeyError:
            incomplete = True  # beyond a shallow fetch's edge
            continue
        for parent in commit.parents:
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    return None if incomplete else False


def known_history(get: Lookup, start: ObjectID) -> set[ObjectID]:
    """The commits of ``start``'s history present here (a shallow fetch's edge ends it)."""
    seen = {start}
    pending = [start]
    found: set[ObjectID] = set()
    while pending:
        sha = pending.pop()
        try:
            commit = _commit(get, sha)
        except KeyError:
            continue
        found.add(sha)
        for parent in commit.parents:
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    return found


def commit_by_prefix(store: BaseObjectStore, ref: str) -> str | None:
    """A commit id, full or abbreviated (unambiguous), present here."""
    if not _HEX.fullmatch(ref):
        return None
    candidates = (
        [ObjectID(ref.encode())] if len(ref) == 40 else list(store.iter_prefix(ref.encode()))
    )
    commits = []
    for sha in candidates:
        try:
            obj = store[sha]
            while isinstance(obj, Tag):
                obj = store[obj.object[1]]
        except KeyError:
            continue
        if isinstance(obj, Commit):
            commits.append(obj.id)
    return commits[0].decode() if len(set(commits)) == 1 else None


def _subtree(get: Lookup, tree: ObjectID, prefix: str) -> ObjectID | None:
    current = tree
    for part in filter(None, prefix.split("/")):
        node = get(current)
        if not isinstance(node, Tree):
            return None
        try:
            mode, sha = node[part.encode("utf-8", errors="surrogateescape")]
        except KeyError:
            return None
        if not stat.S_ISDIR(mode):
            return None
        current = sha
    return current


def log(
    get: Lookup, head: ObjectID, prefix: str, shallow: set[ObjectID]
) -> Iterator[tuple[str, str, str, str, list[str] | None]]:
    """(commit, date, author, subject, files) of commits touching ``prefix``, newest first.

    Like ``git log --no-renames --name-only -- prefix``: merges list no files.
    A commit at the edge of a shallow fetch (its parents are not here) is
    yielded with ``files`` None: what it changed is unknown, and history
    older than it may exist on the remote. Only a true root adds all its files.
    """
    first = _commit(get, head)
    queue = [(-first.commit_time, head)]
    seen = {head}
    while queue:
        _, sha = heapq.heappop(queue)
        commit = _commit(get, sha)
        parents = [] if sha in shallow else list(commit.parents)
        available = []
        for parent in parents:
            try:
                available.append(_commit(get, parent))
            except KeyError:
                continue
        for parent_commit in available:
            if parent_commit.id not in seen:
                seen.add(parent_commit.id)
                heapq.heappush(queue, (-parent_commit.commit_time, parent_commit.id))
        at_edge = len(available) < len(commit.parents)
        if len(parents) > 1 and not at_edge:
            continue
        files: list[str] | None = None
        if not at_edge:
            old = _subtree(get, available[0].tree, prefix) if available else None
            new = _subtree(get, commit.tree, prefix)
            files = [f"{prefix}/{c.path}" if prefix else c.path for c in trees.diff(get, old, new)]
            if not files and prefix:
                continue
        yield (
            sha.decode(),
            _iso_date(commit.author_time, commit.author_timezone),
            commit.author.decode("utf-8", errors="replace"),
            _subject(commit.message),
            files,
        )


def _iso_date(seconds: int, offset: int) -> str:
    zone = UTC if offset == 0 else timezone(timedelta(seconds=offset))
    return datetime.fromtimestamp(seconds, tz=zone).isoformat()


def _subject(message: bytes) -> str:
    text = message.decode("utf-8", errors="replace").strip("\n")
    return " ".join(line.strip() for line in text.split("\n\n", 1)[0].splitlines())


# -- restore ------------------------------------------------------------------------


class MissingPrefix(GitError):
    """The path prefix is not a directory at that commit."""


def safe_name(name: str) -> bool:
    folded = name.lower().rstrip(". ")
    return (
        name not in ("", ".", "..")
        and folded not in (".git", "git~1")
        and not any(c in name for c in "/\\:")
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)
    )


def export(get: Lookup, tree: ObjectID, prefix: str, dest: Path) -> None:
    """Write the regular files of ``tree:prefix`` into the empty directory ``dest``."""
    start = _subtree(get, tree, prefix) if prefix else tree
    if start is None:
        raise MissingPrefix(f"'{prefix}' is not a directory of the commit")
    pending = [(start, os.fspath(dest), "")]
    while pending:
        current, directory, rel = pending.pop()
        node = get(current)
        if not isinstance(node, Tree):
            raise GitError("the commit's tree is damaged")
        for item in node.iteritems():
            name = item.path.decode("utf-8", errors="surrogateescape")
            shown = f"{rel}{name}"
            if not safe_name(name):
                _log.warning("restore: skipped an unsafe path %r", shown)
                continue
            target = os.path.join(directory, name)
            if stat.S_ISDIR(item.mode):
                os.mkdir(target, 0o755)
                pending.append((item.sha, target, shown + "/"))
            elif stat.S_ISREG(item.mode):
                try:
                    blob = get(item.sha)
                except KeyError:
                    raise GitError(f"the content of {shown!r} was not fetched") from None
                if not isinstance(blob, Blob):
                    raise GitError("the commit's tree is damaged")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(target, flags, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(blob.as_raw_string())
            else:
                _log.warning("restore: skipped %r (a link or submodule, not a file)", shown)
