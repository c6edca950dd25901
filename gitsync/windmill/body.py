"""An answer's bytes from Windmill: kept in memory up to a few MB, spooled to disk beyond.

Concurrent syncs must not each hold a workspace archive in memory; a body is
written once by the fetch, then read by any number of threads (the skip
check's digests, the pass-through serving the CLI, the archive readers).
"""

from __future__ import annotations

import io
import tempfile
import threading
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# Answers larger than this go to a file (deleted on close); smaller stay in memory.
SPOOL_BYTES = 4 * 1024 * 1024
CHUNK = 64 * 1024


class Body:
    """An answer's bytes, written once, then read by any number of threads.

    Up to ``SPOOL_BYTES`` in memory, beyond that in an unnamed temporary file
    in ``spool_dir`` (workspace content, ciphertext: never a named file);
    closed when the last reference goes.
    """

    def __init__(self, spool_dir: Path | None = None) -> None:
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(
            max_size=SPOOL_BYTES,
            dir=str(spool_dir) if spool_dir is not None else None,
            prefix="windmill-answer-",
        )
        self._lock = threading.Lock()
        self.size = 0
        self._zip: zipfile.ZipFile | None = None
        self._zip_read = False
        self._zip_lock = threading.Lock()  # not _lock: parsing reads through read_at
        weakref.finalize(self, self._file.close)

    @classmethod
    def of(cls, data: bytes) -> Body:
        body = cls()
        body.write(data)
        return body

    def write(self, data: bytes) -> None:
        with self._lock:
            self._file.seek(0, io.SEEK_END)
            self._file.write(data)
            self.size += len(data)

    def read_at(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._file.seek(offset)
            return self._file.read(size)

    def chunks(self) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = self.read_at(offset, CHUNK)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def read_all(self) -> bytes:
        """Every byte, in memory: for answers kept in memory anyway, and tests."""
        return b"".join(self.chunks())

    def reader(self) -> IO[bytes]:
        """A file object of its own (its own position), for the archive readers."""
        return io.BufferedReader(_BodyReader(self), CHUNK)

    def as_zip(self) -> zipfile.ZipFile | None:
        """The body as a zip archive (None if it is not one), once written whole.

        Parsed once and shared: a sync reads the workspace archive three
        times (the skip check's digests, the narrowed pull's entries, the
        coverage), and its directory alone, 12,800 entries at 5000 items,
        took 40-80 ms to parse each time. Readers open members and never
        close it; it goes with the body.
        """
        with self._zip_lock:
            if not self._zip_read:
                # A weak reference: the body holds the zip, not the other way round.
                reader = io.BufferedReader(_BodyReader(weakref.proxy(self)), CHUNK)
                try:
                    self._zip = zipfile.ZipFile(reader)
                except (zipfile.BadZipFile, ValueError, OSError, EOFError):
                    self._zip = None
                self._zip_read = True
            return self._zip


class _BodyReader(io.RawIOBase):
    def __init__(self, body: Body) -> None:
        self._body = body
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._body.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._body.read_at(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
