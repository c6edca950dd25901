"""Crash safety: the service killed (or stopped) at each phase of a sync, then restarted.

Every test runs its own service processes on its own DATA_DIR, kills them for
real (SIGKILL to gunicorn's process group; the service's children live in
their own sessions, so they survive as orphans, as they would in production),
starts a new service on the same DATA_DIR and checks what a user cares about:
the next sync answers 200, the remote holds exactly what ``wmill sync pull``
writes, its history is linear and keeps every earlier backup (and every commit
the service made), the killed job says ``interrupted``, and no orphan is left.

Where a sync must be caught mid-pull, the emulator holds the tarball request
until the test lets it go (``TarballGate``), so "the pull is in progress" is a
fact the test observed, never a guess about timing. Faults in git are injected
through ``GIT_BIN``: a wrapper that kills the service at a chosen subcommand
and otherwise execs the real git.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from gitsync.windmill.wmill import Scope
from tests.conftest import Target, files_under, made, new_target, plain_pull
from tests.servers.git_server import GitHttpServer, git_env
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

T = TypeVar("T")

SYNC_TIMEOUT = 120  # gunicorn's graceful_timeout is this + 30 s
DEADLINE = 60.0  # upper bound for anything a test polls for


# -- helpers: processes ------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    comm: str
    start_time: str


def _stat(pid: int) -> tuple[str, str, str] | None:
    """(comm, state, start time) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = text.rindex(")")
    comm = text[text.index("(") + 1 : close]
    fields = text[close + 2 :].split()  # fields[0] is field 3 (state) of proc(5)
    return comm, fields[0], fields[19]  # field 22: starttime


def processes_in(directory: Path) -> list[Proc]:
    """Live processes whose working directory is ``directory`` or below it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
        except OSError:  # gone, a zombie, or not ours to look at
            continue
        if cwd == directory or directory in cwd.parents:
            stat = _stat(int(entry))
            if stat is not None and stat[1] != "Z":
                found.append(Proc(int(entry), stat[0], stat[2]))
    return found


def is_alive(proc: Proc) -> bool:
    stat = _stat(proc.pid)
    return stat is not None and stat[1] != "Z" and stat[2] == proc.start_time


def wait_for(predicate: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def in_background(fn: Callable[[], T]) -> Future[T]:
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the test through the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def kill_service(service: ServiceProcess) -> None:
    """SIGKILL gunicorn's master and worker (one process group), as the OOM killer would."""
    assert service.proc is not None
    os.killpg(service.proc.pid, signal.SIGKILL)
    service.proc.wait(timeout=30)


# -- helpers: fixtures -------------------------------------------------------------------


class Services:
    """Service processes sharing one DATA_DIR (a restart is a new process on it)."""

    def __init__(self, root: Path, windmill: WindmillEmulator, ca_pem: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.env = {
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": str(ca_pem),
            "RETRY_ATTEMPTS": "1",
            "SYNC_TIMEOUT": str(SYNC_TIMEOUT),
            "COMMAND_TIMEOUT": "60",
        }
        self.started: list[ServiceProcess] = []

    def start(self, **env: str) -> ServiceProcess:
        proc = ServiceProcess(
            data_dir=self.data_dir,
            log_path=self.root / f"service{len(self.started) + 1}.log",
            env={**self.env, **env},
        )
        self.started.append(proc)
        return proc.start()

    def target_dir(self, target: Target) -> Path:
        """DATA_DIR/targets/<key> of ``target`` (found by the description the service writes)."""
        for path in (self.data_dir / "targets").glob("*/target.json"):
            if json.loads(path.read_text())["workspace"] == target.workspace_id:
                return path.parent
        raise AssertionError(f"no target directory for {target.workspace_id}")

    def close(self) -> None:
        for proc in self.started:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop(timeout=15)  # SIGTERM, then SIGKILL
            elif proc.proc is not None:
                proc.stop()  # closes the log file
        # Children of killed services (orphans) that a failed test left behind.
        for orphan in processes_in(self.data_dir):
            try:
                os.kill(orphan.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class TarballGate:
    """Holds the first tarball request of a workspace at the emulator until released.

    The emulator records a request only once it has answered it, so its log
    cannot tell that a download is in progress; the gate can. It wraps the
    emulator's fault lookup, which every request goes through before it is
    answered (and outside the emulator's lock).
    """

    def __init__(self, windmill: WindmillEmulator) -> None:
        self._windmill = windmill
        self._original = windmill.fault_for
        self._lock = threading.Lock()
        self._armed: str | None = None
        self._arrived = threading.Event()
        self._released = threading.Event()
        windmill.fault_for = self._fault_for  # type: ignore[method-assign]

    def arm(self, workspace_id: str) -> None:
        with self._lock:
            self._armed = workspace_id

    def _fault_for(self, endpoint: str, workspace: str | None) -> str | None:
        if endpoint == "tarball":
            with self._lock:
                hold = workspace is not None and workspace == self._armed
                if hold:
                    self._armed = None  # only the first request is held
            if hold:
                self._arrived.set()
                self._released.wait(2 * DEADLINE)
        return self._original(endpoint, workspace)

    def wait_arrived(self) -> None:
        assert self._arrived.wait(DEADLINE), "the tarball request never reached the emulator"

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        vars(self._windmill).pop("fault_for", None)


@pytest.fixture
def services(windmill: WindmillEmulator, ca_pem: Path, tmp_path: Path) -> Iterator[Services]:
    group = Services(tmp_path, windmill, ca_pem)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def gate(windmill: WindmillEmulator) -> Iterator[TarballGate]:
    held = TarballGate(windmill)
    try:
        yield held
    finally:
        held.close()


@pytest.fixture
def fresh(windmill: WindmillEmulator, git_server: GitHttpServer) -> Target:
    return new_target(windmill, git_server)


# -- helpers: assertions -----------------------------------------------------------------


def assert_linear_history_containing(target: Target, *commits: str) -> list[str]:
    """The remote branch is one chain (each commit's only parent is the next) holding ``commits``."""
    log = target.log()
    assert log, "the remote branch does not exist"
    for child, parent in itertools.pairwise(log):
        assert target.git_server.parents(target.repo, child) == [parent], "history not linear"
    assert target.git_server.parents(target.repo, log[-1]) == []
    missing = [c for c in commits if c not in log]
    assert not missing, f"commits lost: {missing}"
    return log


def assert_remote_is_exact_backup(target: Target, windmill: WindmillEmulator, tmp: Path) -> None:
    """The remote holds exactly what `wmill sync pull` writes for the workspace now.

    (Plus the README the service writes about the backup.)
    """
    expected = tmp / f"plain-{time.monotonic_ns()}"
    plain_pull(windmill, target.workspace_id, expected, Scope().wmill_yaml())
    tree = target.tree()
    tree.pop("README.md", None)
    assert tree == files_under(expected)


def jobs_of(service: ServiceProcess, target: Target) -> list[dict[str, Any]]:
    response = service.get("/jobs", params={"workspace": target.workspace_id})
    assert response.status_code == 200, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


def assert_interrupted(job: dict[str, Any]) -> None:
    assert job["state"] == "interrupted", job
    assert job["error"] == "interrupted", job
    assert job["finished_at"] is not None, job


def job_state(data_dir: Path, job_id: str) -> str | None:
    """A job's state read from the job store itself, for when the service does not answer."""
    with contextlib.closing(sqlite3.connect(data_dir / "jobs.sqlite3", timeout=10)) as db:
        row = db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
    return row[0] if row else None


def local_ref(repo_git: Path, ref: str = "refs/heads/main") -> str | None:
    result = subprocess.run(
        ["git", "--git-dir", str(repo_git), "rev-parse", "--verify", "--quiet", ref],
        env=git_env(repo_git.parent / "test-home"),
        capture_output=True,
        check=False,
        timeout=30,
    )
    return result.stdout.decode().strip() or None


def add_change(target: Target, name: str) -> str:
    """A new script in the workspace; returns the path its backup has."""
    target.workspace.add_script(f"f/team/{name}", language="bash", content=f"echo {name}\n")
    return f"f/team/{name}.sh"


def refused_or_unanswered(url: str) -> BaseException | int:
    """Poll new requests to ``url`` until one is not answered with 200; return what it got.

    gunicorn may still take a connection that arrives in the instant before
    its worker notices the signal; after that, new connections are never
    served (refused, or left unanswered in the listen backlog).
    """

    def attempt() -> BaseException | int | None:
        try:
            status = requests.get(url + "/health", timeout=3).status_code
        except requests.RequestException as exc:
            return exc
        if status == 200:
            time.sleep(0.1)
            return None
        return status

    outcome = wait_for(attempt, "the service to stop taking new requests")
    assert outcome is not None
    return outcome


# -- 1. killed during the pull -----------------------------------------------------------


def test_killed_during_pull_orphan_is_ended_and_next_sync_backs_up(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    first = services.start()
    gate.arm(fresh.workspace_id)
    killed_post = in_background(lambda: first.post("/sync", fresh.body(), timeout=120))
    gate.wait_arrived()  # wmill is now waiting for the workspace archive
    root = services.target_dir(fresh)
    pulling = wait_for(
        lambda: [p for p in processes_in(root / "export") if p.comm == "node"],
        "the wmill CLI (node) running in the export directory",
    )

    kill_service(first)

    assert isinstance(killed_post.exception(timeout=30), requests.ConnectionError)
    orphans = pulling
    # Its own session: the pull is not killed with the service. Since #16 it reaches
    # Windmill through the service's recording pass-through, so it loses that
    # connection and exits by itself, unless it is stuck elsewhere (writing files):
    # then the restart must end it. Either way none may be left running.
    assert (root / "sync.running").exists()
    assert (root / "export.incomplete").exists()
    # What a pull cut short half-way through writing the archive leaves.
    half_written = root / "export" / "f" / "team" / "half_written.sh"
    half_written.parent.mkdir(parents=True, exist_ok=True)
    half_written.write_text("echo partial\n")
    (root / "export" / "wmill-lock.yaml").write_text("version: v2\nlocks:\n  f/team/hel")

    second = services.start()
    response = second.post("/sync", fresh.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True
    assert not [p for p in orphans if is_alive(p)], "the orphaned pull was not ended"
    assert fresh.log() == made(data)
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    assert "f/team/half_written.sh" not in fresh.tree()
    assert not (root / "sync.running").exists()
    assert not (root / "export.incomplete").exists()
    assert not processes_in(root)
    jobs = jobs_of(second, fresh)
    assert len(jobs) == 2
    new, old = jobs  # newest first
    assert new["state"] == "succeeded" and new["commit"] == data["commit"]
    assert_interrupted(old)
    assert old["phase"] == "pulling"
    assert second.get(f"/jobs/{old['id']}").json()["state"] == "interrupted"


def test_killed_during_the_fetch_orphan_is_ended_and_next_sync_backs_up(
    services: Services,
    fresh: Target,
    git_server: GitHttpServer,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    # The fetch runs beside the commit's preparation, with its own pid file:
    # its orphan must be found and ended as the pull's is.
    first = services.start()
    assert first.post("/sync", fresh.body()).status_code == 200
    before = fresh.log()
    add_change(fresh, "during_the_fetch")
    root = services.target_dir(fresh)
    git_server.mode = "blackhole"  # ls-remote waits for an answer that never comes
    try:
        killed_post = in_background(lambda: first.post("/sync", fresh.body(), timeout=120))
        # git-remote-https, waiting on the remote (comm is cut to 15 bytes).
        fetching = wait_for(
            lambda: [p for p in processes_in(root / "repo.git") if p.comm == "git-remote-http"],
            "git asking the remote for its tip",
        )
        assert (root / "fetch.pid").exists()
        kill_service(first)
        assert isinstance(killed_post.exception(timeout=30), requests.ConnectionError)
        assert all(is_alive(p) for p in fetching), "the fetch should be orphaned"

        second = services.start()
        second_post = in_background(lambda: second.post("/sync", fresh.body(), timeout=120))
        # Ended as the sync starts, long before git's own 60 s stall timeout.
        wait_for(
            lambda: not [p for p in fetching if is_alive(p)],
            "the orphaned fetch to be ended",
            timeout=20,
        )
    finally:
        git_server.mode = "normal"
    response = second_post.result(timeout=120)

    assert response.status_code == 200, response.text
    data = response.json()
    assert "ended orphaned child process group" in second.log_text()
    assert fresh.log() == made(data) + before
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    assert not (root / "fetch.pid").exists()
    assert not processes_in(root)
    jobs = jobs_of(second, fresh)
    assert [j["state"] for j in jobs] == ["succeeded", "interrupted", "succeeded"]
    assert jobs[1]["phase"] == "fetching"


# -- 2. killed during the commit or the push ---------------------------------------------

KILLER = """#!{python}
import os, signal, sys
args = sys.argv[1:]
if args and args[0] == {subcommand!r}:
    try:
        os.unlink({trigger!r})  # one kill per trigger
    except FileNotFoundError:
        pass
    else:
        with open({record!r}, "w") as fh:
            fh.write("\\n".join(args))
        with open({pgid_file!r}) as fh:
            pgid = int(fh.read())
        os.killpg(pgid, signal.SIGKILL)
        if {subcommand!r} == "push":
            sys.exit(1)  # the push never happens
os.execv("/usr/bin/git", ["git", *args])
"""


@dataclass
class GitKiller:
    """A GIT_BIN that SIGKILLs the service when git is asked for ``subcommand`` once armed."""

    subcommand: str
    wrapper: Path
    trigger: Path
    record: Path
    pgid_file: Path

    @classmethod
    def install(cls, directory: Path, subcommand: str) -> GitKiller:
        directory.mkdir(parents=True, exist_ok=True)
        killer = cls(
            subcommand,
            directory / "git-killer",
            directory / "armed",
            directory / "argv",
            directory / "service.pgid",
        )
        killer.wrapper.write_text(
            KILLER.format(
                python=sys.executable,
                subcommand=subcommand,
                trigger=str(killer.trigger),
                record=str(killer.record),
                pgid_file=str(killer.pgid_file),
            )
        )
        killer.wrapper.chmod(0o755)
        return killer

    def arm(self, service: ServiceProcess) -> None:
        assert service.proc is not None
        self.pgid_file.write_text(str(os.getpgid(service.proc.pid)))
        self.trigger.touch()

    @property
    def fired(self) -> bool:
        return not self.trigger.exists()

    def argv(self) -> list[str]:
        return self.record.read_text().split("\n")


@pytest.mark.parametrize("change_after_restart", [True, False], ids=["changed", "unchanged"])
@pytest.mark.parametrize("phase", ["commit-tree", "push"])
def test_killed_during_commit_or_push_nothing_is_lost(
    services: Services,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
    phase: str,
    change_after_restart: bool,
) -> None:
    killer = GitKiller.install(tmp_path / "killer", phase)
    first = services.start(GIT_BIN=str(killer.wrapper))
    backup = first.post("/sync", fresh.body())
    assert backup.status_code == 200, backup.text
    earlier = fresh.log()
    assert earlier == made(backup.json())
    pending_change = add_change(fresh, "before_the_crash")

    killer.arm(first)
    killed_post = in_background(lambda: first.post("/sync", fresh.body(), timeout=120))
    first.proc.wait(timeout=DEADLINE)  # type: ignore[union-attr]

    assert killer.fired
    assert isinstance(killed_post.exception(timeout=30), requests.ConnectionError)
    root = services.target_dir(fresh)
    repo_git = root / "repo.git"
    assert (root / "sync.running").exists()
    assert fresh.log() == earlier, "nothing may reach the remote from the killed sync"
    made_here: str | None = None
    if phase == "push":
        # A commit was made and recorded locally; its push is what was cut.
        made_here = killer.argv()[-1].split(":")[0]
        assert killer.argv()[-1] == f"{made_here}:refs/heads/main"
        assert local_ref(repo_git) == made_here
    else:
        assert local_ref(repo_git) == earlier[0]
    # What else a killed git leaves behind.
    (repo_git / "index.lock").write_text("")
    (repo_git / "refs" / "heads" / "main.lock").write_text("0" * 40 + "\n")
    later_change = add_change(fresh, "after_the_crash") if change_after_restart else None

    second = services.start(GIT_BIN=str(killer.wrapper))
    response = second.post("/sync", fresh.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True
    log = assert_linear_history_containing(fresh, *earlier, *([made_here] if made_here else []))
    assert log[0] == data["commit"]
    assert log[len(log) - len(earlier) :] == earlier  # the earlier history, untouched
    since_crash = log[: len(log) - len(earlier)]
    if made_here is None:
        assert since_crash == made(data)
    else:
        # The unpushed commit itself is pushed (not a copy), under this sync's own.
        assert since_crash[: len(made(data))] == made(data)
        assert since_crash[len(made(data))] == made_here
        if not change_after_restart:
            assert made(data) == [] and data["commit"] == made_here
    tree = fresh.tree()
    assert pending_change in tree
    if later_change is not None:
        assert later_change in tree
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    assert not (repo_git / "index.lock").exists()
    assert not (repo_git / "refs" / "heads" / "main.lock").exists()
    assert not (root / "sync.running").exists()
    assert local_ref(repo_git) == data["commit"]
    jobs = jobs_of(second, fresh)
    assert [j["state"] for j in jobs] == ["succeeded", "interrupted", "succeeded"]
    assert_interrupted(jobs[1])
    assert jobs[1]["phase"] == ("pushing" if phase == "push" else "committing")


# -- 3. a corrupted repository -----------------------------------------------------------


def _delete_objects(objects: Path) -> None:
    for entry in objects.iterdir():
        if len(entry.name) == 2 and entry.is_dir():
            for obj in entry.iterdir():
                obj.unlink()
    for pack in (objects / "pack").iterdir():
        pack.unlink()


def _truncate_objects(objects: Path) -> None:
    files = [p for p in objects.rglob("*") if p.is_file() and p.parent.name != "info"]
    assert files
    for obj in files:
        obj.chmod(0o644)
        obj.write_bytes(b"")


@pytest.mark.parametrize(
    "breakage", [_delete_objects, _truncate_objects], ids=["objects-deleted", "objects-truncated"]
)
@pytest.mark.parametrize("crash_marker", [True, False], ids=["after-a-crash", "silently"])
def test_corrupt_repository_is_moved_aside_and_rebuilt_from_the_remote(
    services: Services,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
    breakage: Callable[[Path], None],
    crash_marker: bool,
) -> None:
    first = services.start()
    for n in range(2):
        if n:
            add_change(fresh, "second")
        response = first.post("/sync", fresh.body())
        assert response.status_code == 200, response.text
    earlier = fresh.log()
    assert len(earlier) >= 2
    first.stop()
    root = services.target_dir(fresh)
    repo_git = root / "repo.git"
    breakage(repo_git / "objects")
    if crash_marker:
        (root / "sync.running").touch()  # as a crash leaves it
    change = add_change(fresh, "after_the_corruption")

    second = services.start()
    response = second.post("/sync", fresh.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True
    # Built on the remote tip fetched into the new repository: only the new item differs.
    added = {f["path"] for f in data["files"] if f["status"] == "added"}
    assert change in added
    assert all(p.startswith("f/team/after_the_corruption.") for p in added), added
    assert data["deleted"] == 0
    aside = list(root.glob("corrupt-*.git"))
    if crash_marker or breakage is _truncate_objects:
        assert len(aside) == 1, aside
        # Kept, with its refs, for salvage: not deleted.
        assert (aside[0] / "refs" / "heads" / "main").read_text().strip() == earlier[0]
        assert "failed fsck" in second.log_text()
    else:
        # Without a crash marker, missing objects are simply fetched again.
        assert len(aside) <= 1, aside
    assert local_ref(repo_git) == data["commit"]
    log = assert_linear_history_containing(fresh, *earlier)
    assert log == made(data) + earlier
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)


def test_a_stale_scratch_index_lock_does_not_block_attributed_commits(
    services: Services, fresh: Target
) -> None:
    first = services.start()
    assert first.post("/sync", fresh.body()).status_code == 200
    kill_service(first)
    root = services.target_dir(fresh)
    # git itself killed (OOM, docker kill) while building a per-author tree.
    (root / "repo.git" / "scratch-index.lock").write_text("")
    (root / "repo.git" / "scratch-index").write_text("half written")
    fresh.workspace.add_script(
        "f/team/by_admin", language="bash", content="echo a\n", edited_by="admin"
    )
    fresh.workspace.add_script(
        "f/team/by_bob", language="bash", content="echo b\n", edited_by="bob"
    )

    second = services.start()
    response = second.post("/sync", fresh.body())

    assert response.status_code == 200, response.text
    assert len(response.json()["commits"]) == 2
    assert not (root / "repo.git" / "scratch-index.lock").exists()


# -- 4. SIGTERM: the in-flight sync finishes ---------------------------------------------


@pytest.mark.parametrize("to", ["master", "process-group"])
def test_sigterm_lets_the_in_flight_sync_finish(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
    to: str,
) -> None:
    service = services.start()
    assert service.proc is not None
    gate.arm(fresh.workspace_id)
    in_flight = in_background(lambda: service.post("/sync", fresh.body(), timeout=2 * DEADLINE))
    gate.wait_arrived()

    if to == "master":  # what `docker stop` does through tini
        os.kill(service.proc.pid, signal.SIGTERM)
    else:
        service.signal(signal.SIGTERM)
    # New work is turned away while the sync is still held at the emulator.
    refused_or_unanswered(service.url)
    assert not in_flight.done()
    gate.release()
    response = in_flight.result(timeout=2 * DEADLINE)

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True
    returncode = service.proc.wait(timeout=SYNC_TIMEOUT + 30 + 15)
    assert returncode == 0, service.log_text()[-4000:]
    assert fresh.log() == made(data)
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    root = services.target_dir(fresh)
    assert not (root / "sync.running").exists()  # a clean finish, not a crash
    assert not processes_in(root)
    with pytest.raises(requests.ConnectionError):
        requests.get(service.url + "/health", timeout=5)


def test_sigterm_lets_a_running_async_sync_finish_and_ends_the_waiting_one(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    service = services.start()
    assert service.proc is not None
    gate.arm(fresh.workspace_id)
    running = service.post("/sync", fresh.body(wait=False))
    assert running.status_code == 202, running.text
    gate.wait_arrived()
    # Same target, different inputs: it waits in the target's lane behind the first.
    waiting = service.post("/sync", fresh.body(wait=False, git_user_name="Someone Else"))
    assert waiting.status_code == 202, waiting.text
    assert waiting.json()["coalesced"] is False
    running_id, waiting_id = running.json()["job_id"], waiting.json()["job_id"]
    assert service.get(f"/jobs/{waiting_id}").json()["state"] == "queued"

    os.kill(service.proc.pid, signal.SIGTERM)
    # The worker's exit hook ends what has not started, while the first sync is held.
    wait_for(
        lambda: job_state(services.data_dir, waiting_id) == "interrupted",
        "the waiting job to be marked interrupted",
    )
    assert job_state(services.data_dir, running_id) == "running"
    gate.release()

    returncode = service.proc.wait(timeout=SYNC_TIMEOUT + 30 + 15)
    assert returncode == 0, service.log_text()[-4000:]
    log = fresh.log()
    assert log, "the running sync should have finished before the service exited"
    assert_linear_history_containing(fresh)
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    for commit in log:  # the waiting sync (another committer name) never ran
        assert b"Someone Else" not in fresh.git_server.cat_commit(fresh.repo, commit)
    restarted = services.start()
    finished = restarted.get(f"/jobs/{running_id}").json()
    assert finished["state"] == "succeeded", finished
    assert finished["commit"] == log[0]
    ended = restarted.get(f"/jobs/{waiting_id}").json()
    assert ended["state"] == "interrupted" and ended["error"] == "shutting_down", ended
    assert ended["started_at"] is None


# -- 5. an async job killed mid-run ------------------------------------------------------


def test_killed_async_job_is_interrupted_and_next_sync_succeeds(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    first = services.start()
    gate.arm(fresh.workspace_id)
    queued = first.post("/sync", fresh.body(wait=False))
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    gate.wait_arrived()
    running = wait_for(
        lambda: (j := first.get(f"/jobs/{job_id}").json())["state"] == "running" and j,
        "the job to be running",
    )
    assert running["phase"] == "pulling"
    root = services.target_dir(fresh)
    orphans = wait_for(
        lambda: [p for p in processes_in(root / "export") if p.comm == "node"],
        "the wmill CLI (node) running in the export directory",
    )

    kill_service(first)
    second = services.start()

    job = second.get(f"/jobs/{job_id}")
    assert job.status_code == 200, job.text
    assert_interrupted(job.json())
    assert job.json()["phase"] == "pulling"
    response = second.post("/sync", fresh.body())
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True and fresh.log() == made(data)
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    assert not [p for p in orphans if is_alive(p)]
    assert not processes_in(root)
    assert_interrupted(second.get(f"/jobs/{job_id}").json())  # not overwritten
