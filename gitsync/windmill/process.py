"""The one place where child processes are started.

Every ``git`` and ``wmill`` invocation goes through :func:`run`: an argument
list (never a shell string), an environment the caller built from scratch, a
deadline, its own process group so a timeout kills grandchildren too (git's
``git-remote-https``, node's workers), and output redacted before anyone sees
it.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitsync.errors import CommandError, SyncTimeout
from gitsync.secrets import Redactor

log = logging.getLogger(__name__)

# After SIGTERM, how long a process group gets before SIGKILL. git removes its
# lock files on SIGTERM but not on SIGKILL, so the polite signal comes first.
TERM_GRACE_SECONDS = 5.0

# CAP_SYS_RESOURCE (linux/capability.h): lets a process raise a hard limit.
_CAP_SYS_RESOURCE = 24
# Set once a child's RLIMIT_FSIZE could not be set (a sandbox, a lower hard limit).
_fsize_refused = threading.Event()


@dataclass(frozen=True)
class Completed:
    step: str
    returncode: int
    stdout: str  # redacted
    stderr: str  # redacted
    raw_stdout: bytes  # for plumbing output (ids, -z lists); never logged


def run(
    argv: Sequence[str],
    *,
    step: str,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    redactor: Redactor,
    stdin: bytes | None = None,
    pass_fds: Sequence[int] = (),
    ok_codes: Sequence[int] = (0,),
    pid_file: Path | None = None,
    max_file_bytes: int = 0,
) -> Completed:
    """Run ``argv`` and return its redacted output.

    ``step`` names what the command does in words a user understands ("git
    fetch"); it appears in timeouts and errors. Exit codes in ``ok_codes`` are
    success; any other raises :class:`CommandError`.

    ``pid_file`` records the child's process group while it runs, so that
    after a crash of this process the next run can find and end an orphan.
    ``max_file_bytes`` caps any single file the child writes (RLIMIT_FSIZE);
    the child then gets EFBIG instead of filling the disk.
    """
    if timeout <= 0:
        raise SyncTimeout(step, 0)
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
        close_fds=True,
        # Keep SIGXFSZ ignored (as Python has it) so an oversized write fails
        # with EFBIG, which the child reports, instead of killing it.
        restore_signals=not max_file_bytes,
    )
    if max_file_bytes:
        try:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        except ProcessLookupError:  # already gone
            pass
        except (PermissionError, ValueError) as exc:
            # The child runs on with the limit it inherited: say so, every time.
            _fsize_refused.set()
            log.warning(
                "MAX_FILE_BYTES (%d) was not applied to %s: %s; the child runs with the "
                "file-size limit it inherited",
                max_file_bytes,
                step,
                exc,
                extra={"event": "limit_not_applied", "limit": "MAX_FILE_BYTES"},
            )
    if pid_file is not None:
        pid_file.write_text(f"{proc.pid}\n")
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise SyncTimeout(step, timeout) from None
    except BaseException:
        # Interrupted (e.g. the worker is shutting down): leave nothing behind.
        _kill_group(proc)
        raise
    finally:
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    result = Completed(
        step=step,
        returncode=proc.returncode,
        stdout=redactor.scrub_bytes(out),
        stderr=redactor.scrub_bytes(err),
        raw_stdout=out,
    )
    log.debug("%s exited %s in %.2fs", step, proc.returncode, elapsed)
    if proc.returncode not in ok_codes:
        raise CommandError(step, proc.returncode, result.stdout, result.stderr)
    return result


def file_size_limit_problem(max_file_bytes: int) -> str | None:
    """Why MAX_FILE_BYTES cannot be applied to the CLI's children, or None if it can.

    Checked without starting a child: prlimit must be allowed at all (some
    sandboxes refuse it), and a limit above this process's hard limit needs
    CAP_SYS_RESOURCE. A refusal seen at run time is reported too.
    """
    if not max_file_bytes:
        return None
    try:
        current = resource.prlimit(os.getpid(), resource.RLIMIT_FSIZE)
        resource.prlimit(os.getpid(), resource.RLIMIT_FSIZE, current)  # sets what is there
    except (PermissionError, OSError) as exc:
        return f"setting a process's file-size limit is not allowed here ({exc.strerror})"
    hard = current[1]
    if hard != resource.RLIM_INFINITY and hard < max_file_bytes and not _has_cap_sys_resource():
        return (
            f"this process's hard file-size limit ({hard} bytes) is below MAX_FILE_BYTES "
            "and it may not raise it (no CAP_SYS_RESOURCE)"
        )
    if _fsize_refused.is_set():
        return "a child's file-size limit could not be set (see the log)"
    return None


def _has_cap_sys_resource() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        pass
    return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def end_orphan(pid_file: Path, owned_dir: Path) -> bool:
    """End the process group recorded in ``pid_file`` if it is still ours.

    A child whose parent was SIGKILLed keeps running in its own session. It
    is ours if its working directory is inside ``owned_dir`` (a recycled pid
    would not be). Returns True if an orphan was ended.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        pid_file.unlink(missing_ok=True)
        return False
    ended = False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        if cwd == owned_dir or owned_dir in cwd.parents:
            os.killpg(pid, signal.SIGKILL)
            ended = True
            log.warning("ended orphaned child process group %d left by a crash", pid)
            for _ in range(100):  # gone once its cwd is (a zombie has none)
                if not os.path.exists(f"/proc/{pid}/cwd"):
                    break
                time.sleep(0.05)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    pid_file.unlink(missing_ok=True)
    return ended
