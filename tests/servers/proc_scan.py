"""Catch secrets in other processes' command lines and environments, and on disk.

``ProcScanner`` is the "/proc scanner" of the shared security notes (section
(a), T7/T8): a background thread that samples ``/proc/*/cmdline`` (and the
``environ`` of git and node processes) every couple of milliseconds, looking
for byte strings. A sampler can miss a process that lives less than one sweep,
so tests that rely on a negative result should make the interesting processes
live longer (a slow server) and check ``sweeps`` and ``environ_seen`` to prove
the scanner was actually looking.

Hits never contain the needle: a ``Hit`` names the process by its argv[0]
(with any needle cut out) so that printing a failed assertion leaks nothing.
"""

from __future__ import annotations

import base64
import os
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# Usernames git clients pair with a token (shared security notes, c.5), plus ""
# for the ":<token>" form Azure DevOps' own samples use.
USERNAMES = ("git", "x-access-token", "oauth2", "x-token-auth", "pat", "")
# Processes whose environment is worth reading: the ones we hand credentials to.
ENVIRON_COMMANDS = ("git", "git-*", "node", "nodejs", "wmill")
_REDACTED = b"<needle>"


@dataclass(frozen=True, slots=True)
class Hit:
    pid: int
    exe: str  # basename of argv[0], any needle replaced by "<needle>"
    where: str  # "cmdline" or "environ"
    needle: int  # index into the scanner's needles, never the needle itself


def needles_for(token: str, username: str | None = None) -> list[bytes]:
    """Every form in which ``token`` could leak: raw, URL-encoded, and inside Basic auth."""
    forms = [token.encode(), urllib.parse.quote(token, safe="").encode()]
    users = [*USERNAMES, *([username] if username is not None else [])]
    forms += [base64.b64encode(f"{user}:{token}".encode()) for user in users]
    return list(dict.fromkeys(forms))  # dedupe, keep order


def _redact(data: bytes, needles: Sequence[bytes]) -> bytes:
    for needle in needles:
        data = data.replace(needle, _REDACTED)
    return data


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns)


class ProcScanner:
    """Background sampler of ``/proc``; see the module docstring."""

    def __init__(
        self,
        needles: Iterable[bytes],
        *,
        interval: float = 0.002,
        environ: bool = True,
        environ_commands: Sequence[str] = ENVIRON_COMMANDS,
    ) -> None:
        self.needles = [n for n in dict.fromkeys(needles) if n]
        if not self.needles:
            raise ValueError("no needles")
        self.interval = interval
        self.environ = environ
        self.environ_commands = tuple(environ_commands)
        self.sweeps = 0  # completed passes over /proc
        self.environ_seen: set[str] = set()  # commands whose environ was actually read
        self._hits: dict[tuple[int, str, int, str], Hit] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ProcScanner:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="proc-scan", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Hit]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(10)
            self._thread = None
        return self.hits()

    def hits(self) -> list[Hit]:
        """Hits so far (each process/place/needle once), in the order found."""
        with self._lock:
            return list(self._hits.values())

    def clear(self) -> None:
        with self._lock:
            self._hits.clear()

    def wait_sweeps(self, count: int, timeout: float = 5.0) -> None:
        """Block until ``count`` more full sweeps are done (a barrier for tests)."""
        target = self.sweeps + count
        end = time.monotonic() + timeout
        while self.sweeps < target:
            if time.monotonic() > end:
                raise TimeoutError("the scanner is not sweeping")
            time.sleep(self.interval)

    def __enter__(self) -> ProcScanner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- sampling -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.interval)

    def sweep(self) -> None:
        """One pass over every process; public so tests can sample synchronously."""
        try:
            entries = os.listdir("/proc")
        except OSError:
            return
        for entry in entries:
            if not entry.isdigit():
                continue
            pid = int(entry)
            cmdline = _read(f"/proc/{entry}/cmdline")
            if cmdline is None:
                continue  # gone, or a kernel thread
            argv0 = cmdline.split(b"\0", 1)[0]
            exe = os.path.basename(_redact(argv0, self.needles)).decode(errors="replace")
            self._check(pid, exe, "cmdline", cmdline)
            if self.environ and _matches(exe, self.environ_commands):
                environ = _read(f"/proc/{entry}/environ")
                if environ is not None:
                    self.environ_seen.add(exe)
                    self._check(pid, exe, "environ", environ)
        self.sweeps += 1

    def _check(self, pid: int, exe: str, where: str, data: bytes) -> None:
        for index, needle in enumerate(self.needles):
            if needle in data:
                key = (pid, where, index, exe)
                with self._lock:
                    self._hits.setdefault(key, Hit(pid, exe, where, index))


def _read(path: str) -> bytes | None:
    # os.open/os.read: no buffered file object per read, at hundreds of reads per sweep.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)
    except OSError:
        return None  # environ of another uid, or the process exited mid-read
    finally:
        os.close(fd)


def scan_tree(root: Path | str, needles: Iterable[bytes]) -> list[Path]:
    """Files under ``root`` whose content, name or symlink target contains a needle.

    Never follows symlinks (a link is judged by its own target string), and
    reads large files in overlapping blocks rather than whole.
    """
    wanted = [n for n in dict.fromkeys(needles) if n]
    if not wanted:
        raise ValueError("no needles")
    overlap = max(len(n) for n in wanted) - 1
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(
            filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        ):
            path = Path(dirpath, name)
            raw_name = os.fsencode(name)
            if any(n in raw_name for n in wanted):
                found.append(path)
            elif path.is_symlink():
                if any(n in os.fsencode(os.readlink(path)) for n in wanted):
                    found.append(path)
            elif path.is_file() and _file_contains(path, wanted, overlap):
                found.append(path)
        dirnames.sort()
        for d in dirnames:
            if any(n in os.fsencode(d) for n in wanted):
                found.append(Path(dirpath, d))
    return sorted(set(found))


def _file_contains(path: Path, needles: Sequence[bytes], overlap: int) -> bool:
    try:
        with path.open("rb") as handle:
            tail = b""
            while True:
                block = handle.read(1 << 20)
                if not block:
                    return False
                window = tail + block
                if any(n in window for n in needles):
                    return True
                tail = window[-overlap:] if overlap else b""
    except OSError:
        return False  # unreadable (permissions, a FIFO vanished): not ours to judge
