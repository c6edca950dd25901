"""Blob ids of the export's files, remembered by their stat, as Git's index does.

Reading and hashing every file of the export on every sync (12,800 files at
5000 items) was most of the Git side of a small change, and most of the skip
check. A file whose size, mtime, ctime, inode and device are those it had when
it was hashed still has that content: the kernel sets ctime on every write,
on every change of mtime and on every rename, and no system call sets ctime.

One exception, which Git calls "racy": a file written again within the same
timestamp tick as it was hashed can change with its times unchanged. So an
entry is trusted only if the file's times were at least ``RACY_SECONDS`` older
than the moment it was hashed; a file the CLI has just written is hashed
again next time, and only trusted entries are saved.

The saved index holds paths, stats and blob ids (the ids the backup's
commits already show), never content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from dulwich.objects import ObjectID

log = logging.getLogger(__name__)

_FORMAT = "windmill-git-sync file index 1"
# Inode timestamps come from a coarse clock (a few ms); one second is ample.
RACY_SECONDS = 1.0
_SHA = re.compile(r"[0-9a-f]{40}")
Stamp = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, device


def blob_id(data: bytes) -> ObjectID:
    """Git's id of a blob holding ``data``, straight from hashlib (no Blob object)."""
    header = b"blob %d\0" % len(data)
    return ObjectID(hashlib.sha1(header + data).hexdigest().encode())  # noqa: S324


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class FileIndex:
    """Path (relative to the export) -> the stat and blob id it had when last hashed."""

    def __init__(self, racy_seconds: float = RACY_SECONDS) -> None:
        self._racy_ns = int(racy_seconds * 1e9)
        # Only trusted entries: see the module's docstring.
        self._entries: dict[str, tuple[Stamp, ObjectID]] = {}
        self.hashed = 0  # files read this time: what the index did not spare

    @classmethod
    def load(cls, path: Path, racy_seconds: float = RACY_SECONDS) -> FileIndex:
        """The index saved at ``path``; empty (everything hashed) if missing or unreadable."""
        index = cls(racy_seconds)
        try:
            lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            if not lines or lines[0] != _FORMAT:
                return index
            for line in lines[1:]:
                sha, size, mtime, ctime, ino, dev, rel = line.split("\t", 6)
                if not _SHA.fullmatch(sha):
                    raise ValueError("not a blob id")  # a damaged file: trust none of it
                stamp = (int(size), int(mtime), int(ctime), int(ino), int(dev))
                index._entries[rel] = (stamp, ObjectID(sha.encode()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.warning("the file index %s is unreadable; hashing every file", path)
            index._entries.clear()
        return index

    def blob_id(self, rel: str, path: str, st: os.stat_result | None = None) -> ObjectID:
        """The blob id of the file at ``path`` (``rel`` in the export), read only if it changed."""
        return self.cached(rel, path, st) or self.hash_file(rel, path)[0]

    def cached(self, rel: str, path: str, st: os.stat_result | None = None) -> ObjectID | None:
        """The remembered id, if the file's stat says it has not changed since; else None."""
        entry = self._entries.get(rel)
        if entry is None:
            return None
        stamp = stamp_of(st if st is not None else os.stat(path, follow_symlinks=False))
        return entry[1] if entry[0] == stamp else None

    def hash_file(self, rel: str, path: str) -> tuple[ObjectID, bytes]:
        """Reads the file, remembers its id, and gives both (for a blob to be written)."""
        # O_NOFOLLOW: a symbolic link put in a file's place is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            # The stat before the read: a write during it moves mtime past it.
            stamp = stamp_of(os.fstat(fd))
            chunks = [os.read(fd, stamp[0] + 1)]
            while chunks[-1]:
                chunks.append(os.read(fd, 1 << 20))
        finally:
            os.close(fd)
        data = b"".join(chunks)
        sha = blob_id(data)
        racy_from = time.time_ns() - self._racy_ns
        if max(stamp[1], stamp[2]) < racy_from:
            self._entries[rel] = (stamp, sha)
        else:
            self._entries.pop(rel, None)
        self.hashed += 1
        return sha, data

    def save(self, path: Path, present: Iterable[str]) -> None:
        """Writes the entries of the files ``present`` now (0600, atomically)."""
        lines = [_FORMAT]
        for rel in sorted(present):
            entry = self._entries.get(rel)
            if entry is None or "\t" in rel or "\n" in rel or "\r" in rel:
                continue
            (size, mtime, ctime, ino, dev), sha = entry
            lines.append(f"{sha.decode()}\t{size}\t{mtime}\t{ctime}\t{ino}\t{dev}\t{rel}")
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write("\n".join(lines) + "\n")
        tmp.replace(path)
