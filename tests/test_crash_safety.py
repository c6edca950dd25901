"""Crash safety: the service killed (or stopped) at each phase of a sync, then restarted.

Every test runs its own service processes on its own DATA_DIR, kills them for
real (SIGKILL to the service's process group; the service's children live in
their own sessions, so they survive as orphans, as they would in production),
starts a new service on the same DATA_DIR and checks what a user cares about:
the next sync answers 200, the remote holds exactly what ``wmill sync pull``
writes, its history is linear and keeps every earlier backup (and every commit
the service made), the killed job says ``interrupted``, and no orphan is left.

Where a sync must be caught mid-pull, the emulator holds the tarball request
until the test lets it go (``TarballGate``), so "the pull is in progress" is a
fact the test observed, never a guess about timing. Git runs inside the
service (dulwich), so a kill "during the commit" or "during the push" is
fired by the servers at the exact protocol step: the Windmill emulator when
the commit's authors are looked up, the Git server when the push arrives
(``Killer``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
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

SYNC_TIMEOUT = 120
SHUTDOWN_GRACE = SYNC_TIMEOUT + 30  # what the drain tests' services give a sync on SIGTERM
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
    """SIGKILL the service's process group, as the OOM killer would."""
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
            "SHUTDOWN_GRACE_SECONDS": str(SHUTDOWN_GRACE),
        }
        self.started: list[ServiceProcess] = []

    def start(self, prefix: tuple[str, ...] = (), **env: str) -> ServiceProcess:
        proc = ServiceProcess(
            data_dir=self.data_dir,
            log_path=self.root / f"service{len(self.started) + 1}.log",
            env={**self.env, **env},
            prefix=prefix,
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


def assert_completed_by(job: dict[str, Any], by: str) -> None:
    """An interrupted job whose work a later sync of its target did; the interruption is kept."""
    assert job["state"] == "succeeded", job
    assert job["completed_by"] == by, job
    assert job["interrupted_at"] is not None and job["finished_at"] is not None, job
    assert job["error"] is None and by in job["message"], job


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


def assert_draining(service: ServiceProcess, target: Target) -> None:
    """New work is turned away with 503 and Retry-After; /health and the job history answer."""

    def draining() -> bool:
        return service.get("/ready", timeout=5).status_code == 503

    wait_for(draining, "/ready to say the service is shutting down", timeout=10)
    for path in ("/sync", "/restore"):
        refused = service.post(path, target.body(), timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "30"
        assert refused.json()["error"] == "shutting_down"
    # On a kept-alive connection too, not only on new ones.
    with requests.Session() as session:
        for _ in range(2):
            again = session.post(service.url + "/sync", json=target.body(), timeout=10)
            assert again.status_code == 503, again.text
    assert "shutting down" in service.get("/ready", timeout=5).json()["problems"][0]
    assert service.get("/health", timeout=5).status_code == 200
    jobs = jobs_of(service, target)
    assert jobs and service.get(f"/jobs/{jobs[0]['id']}", timeout=5).status_code == 200


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
    assert_completed_by(old, new["id"])  # interrupted by the kill, done by the next sync
    assert old["phase"] == "pulling"
    assert second.get(f"/jobs/{old['id']}").json()["completed_by"] == new["id"]


def test_killed_during_the_fetch_next_sync_backs_up(
    services: Services,
    fresh: Target,
    git_server: GitHttpServer,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    # The fetch runs in a thread of the service, begun while the CLI pulls
    # and awaited by the commit's preparation: killed there, it leaves no
    # process, only what dulwich was writing, which the next sync clears.
    first = services.start()
    assert first.post("/sync", fresh.body()).status_code == 200
    before = fresh.log()
    add_change(fresh, "during_the_fetch")
    root = services.target_dir(fresh)
    git_server.clear_requests()
    git_server.mode = "blackhole"  # the remote never answers the fetch
    try:
        killed_post = in_background(lambda: first.post("/sync", fresh.body(), timeout=120))
        wait_for(
            lambda: (
                [r for r in git_server.requests if r.repo == fresh.repo and r.status is None]
                and jobs_of(first, fresh)[0]["phase"] == "fetching"
            ),
            "the service waiting for the remote's tip, the CLI done",
        )
        kill_service(first)
        assert isinstance(killed_post.exception(timeout=30), requests.ConnectionError)
        # What a fetch killed mid-pack leaves (dulwich never removes them itself).
        objects = root / "repo.git" / "objects"
        (objects / "tmp_pack_killed").write_bytes(b"PACK\0\0\0\2")
        (objects / "pack" / "tmp_pack_killed").write_bytes(b"PACK")
        (root / "repo.git" / "refs" / "remotes" / "origin").mkdir(parents=True, exist_ok=True)
        (root / "repo.git" / "refs" / "remotes" / "origin" / "main.lock").write_text("")
    finally:
        git_server.mode = "normal"
    second = services.start()
    response = second.post("/sync", fresh.body(), timeout=120)

    assert response.status_code == 200, response.text
    data = response.json()
    assert fresh.log() == made(data) + before
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    assert not list(objects.glob("tmp_pack_*")) and not list((objects / "pack").glob("tmp*"))
    assert not processes_in(root)
    fresh.git_server.fsck(fresh.repo)
    jobs = jobs_of(second, fresh)
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded", "succeeded"]
    assert_completed_by(jobs[1], jobs[0]["id"])
    assert jobs[1]["phase"] == "fetching"


# -- 2. killed during the commit or the push ---------------------------------------------


class Killer:
    """SIGKILLs a service's process group once, at a protocol step a server observes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pgid: int | None = None
        self.fired = False

    def arm(self, service: ServiceProcess) -> None:
        assert service.proc is not None
        with self._lock:
            self._pgid = os.getpgid(service.proc.pid)

    def fire(self) -> bool:
        with self._lock:
            if self._pgid is None:
                return False
            pgid, self._pgid = self._pgid, None
        os.killpg(pgid, signal.SIGKILL)
        self.fired = True
        return True


@contextlib.contextmanager
def kill_at(phase: str, git_server: GitHttpServer, windmill: WindmillEmulator) -> Iterator[Killer]:
    """A Killer that fires while the commit is made, or when its push arrives."""
    killer = Killer()
    original = windmill.fault_for

    def on_git_request(method: str, path: str, service: str | None) -> None:
        if phase == "push" and method == "POST" and service == "git-receive-pack":
            if killer.fire():
                # The pusher is dead: the push must not happen on its behalf.
                raise ConnectionAbortedError("killed")

    def on_windmill_request(endpoint: str, workspace: str | None) -> str | None:
        # The authors of the changed items are looked up while the commit is built.
        if phase == "commit" and endpoint == "users/list":
            killer.fire()
            time.sleep(1)  # the answer must not arrive before the kill lands
        return original(endpoint, workspace)

    git_server.before_backend = on_git_request
    windmill.fault_for = on_windmill_request  # type: ignore[method-assign]
    try:
        yield killer
    finally:
        git_server.before_backend = None
        vars(windmill).pop("fault_for", None)


@pytest.mark.parametrize("change_after_restart", [True, False], ids=["changed", "unchanged"])
@pytest.mark.parametrize("phase", ["commit", "push"])
def test_killed_during_commit_or_push_nothing_is_lost(
    services: Services,
    fresh: Target,
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
    tmp_path: Path,
    phase: str,
    change_after_restart: bool,
) -> None:
    first = services.start()
    backup = first.post("/sync", fresh.body())
    assert backup.status_code == 200, backup.text
    earlier = fresh.log()
    assert earlier == made(backup.json())
    pending_change = add_change(fresh, "before_the_crash")

    with kill_at(phase, git_server, windmill) as killer:
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
        made_here = local_ref(repo_git)
        assert made_here is not None and made_here != earlier[0]
        assert local_ref(repo_git, f"{made_here}^") == earlier[0]
    else:
        assert local_ref(repo_git) == earlier[0]
    # What else a killed writer leaves behind: lock files, a half-written pack.
    (repo_git / "refs" / "heads" / "main.lock").write_text("0" * 40 + "\n")
    (repo_git / "packed-refs.lock").write_text("")
    (repo_git / "objects" / "pack" / "tmp_pack_half").write_bytes(b"PACK\0\0\0\2\0")
    later_change = add_change(fresh, "after_the_crash") if change_after_restart else None

    second = services.start()
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
    assert not (repo_git / "packed-refs.lock").exists()
    assert not (repo_git / "refs" / "heads" / "main.lock").exists()
    assert not (repo_git / "objects" / "pack" / "tmp_pack_half").exists()
    assert not (root / "sync.running").exists()
    fresh.git_server.fsck(fresh.repo)
    assert local_ref(repo_git) == data["commit"]
    jobs = jobs_of(second, fresh)
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded", "succeeded"]
    assert_completed_by(jobs[1], jobs[0]["id"])
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


def test_stale_lock_files_do_not_block_attributed_commits(
    services: Services, fresh: Target
) -> None:
    first = services.start()
    assert first.post("/sync", fresh.body()).status_code == 200
    kill_service(first)
    root = services.target_dir(fresh)
    repo_git = root / "repo.git"
    # The service killed (OOM, docker kill) while dulwich held its locks:
    # a loose object's, the shallow list's, a ref's; and an earlier
    # version's git index left beside them.
    (repo_git / "objects" / "ab").mkdir(exist_ok=True)
    stale = [
        repo_git / "objects" / "ab" / ("cd" * 19 + ".lock"),
        repo_git / "shallow.lock",
        repo_git / "refs" / "heads" / "main.lock",
        repo_git / "scratch-index.lock",
    ]
    for path in stale:
        path.write_text("")
    (repo_git / "scratch-index").write_text("half written")
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
    assert not [p for p in stale if p.exists()]
    fresh.git_server.fsck(fresh.repo)


# -- 4. SIGTERM or SIGINT: a drain ------------------------------------------------------


@pytest.mark.parametrize("how", ["sigterm", "sigterm-to-group", "sigint"])
def test_a_signal_lets_the_in_flight_sync_finish_and_refuses_new_work(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
    how: str,
) -> None:
    service = services.start()
    assert service.proc is not None
    gate.arm(fresh.workspace_id)
    in_flight = in_background(lambda: service.post("/sync", fresh.body(), timeout=2 * DEADLINE))
    gate.wait_arrived()
    time.sleep(1)  # one second into the sync

    if how == "sigterm":  # what `docker stop` does through tini
        os.kill(service.proc.pid, signal.SIGTERM)
    elif how == "sigterm-to-group":  # the CLI children live in sessions of their own
        service.signal(signal.SIGTERM)
    else:  # Ctrl-C under `make run`
        os.kill(service.proc.pid, signal.SIGINT)
    signalled = time.monotonic()
    assert_draining(service, fresh)
    assert not in_flight.done()
    time.sleep(max(0.0, 4 - (time.monotonic() - signalled)))  # a five-second sync in all
    gate.release()
    response = in_flight.result(timeout=2 * DEADLINE)

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True
    returncode = service.proc.wait(timeout=SHUTDOWN_GRACE + 15)
    assert returncode == 0, service.log_text()[-4000:]
    assert "drained cleanly" in service.log_text()
    assert fresh.log() == made(data)  # its commit is pushed
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    root = services.target_dir(fresh)
    assert not (root / "sync.running").exists()  # a clean finish, not a crash
    assert not processes_in(root)
    with pytest.raises(requests.ConnectionError):
        requests.get(service.url + "/health", timeout=5)


def test_a_drain_finishes_running_and_waiting_async_syncs(
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
    assert_draining(service, fresh)
    assert job_state(services.data_dir, waiting_id) == "queued"  # accepted: it will run
    gate.release()

    returncode = service.proc.wait(timeout=SHUTDOWN_GRACE + 15)
    assert returncode == 0, service.log_text()[-4000:]
    assert_linear_history_containing(fresh)
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    restarted = services.start()
    finished = restarted.get(f"/jobs/{running_id}").json()
    assert finished["state"] == "succeeded", finished
    assert finished["commit"] == fresh.log()[0]
    ran_too = restarted.get(f"/jobs/{waiting_id}").json()
    assert ran_too["state"] == "succeeded" and ran_too["completed_by"] is None, ran_too
    assert restarted.get("/ready").json()["owed_runs"] == []


def test_as_pid_1_sigterm_drains_too(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    # PID 1 of a PID namespace (a container without an init) gets a signal from
    # outside only if it handles it: plain waitress would ignore docker stop.
    service = services.start(prefix=("unshare", "--pid", "--fork", "--kill-child"))
    assert service.proc is not None
    children = Path(f"/proc/{service.proc.pid}/task/{service.proc.pid}/children")
    [pid_1] = [int(pid) for pid in children.read_text().split()]
    ns_pids = [line for line in Path(f"/proc/{pid_1}/status").read_text().splitlines()]
    assert [line.split()[-1] for line in ns_pids if line.startswith("NSpid:")] == ["1"]
    gate.arm(fresh.workspace_id)
    in_flight = in_background(lambda: service.post("/sync", fresh.body(), timeout=2 * DEADLINE))
    gate.wait_arrived()

    os.kill(pid_1, signal.SIGTERM)
    assert_draining(service, fresh)
    gate.release()

    response = in_flight.result(timeout=2 * DEADLINE)
    assert response.status_code == 200, response.text
    assert fresh.log() == made(response.json())
    assert service.proc.wait(timeout=SHUTDOWN_GRACE + 15) == 0, service.log_text()[-4000:]
    assert "drained cleanly" in service.log_text()


def test_a_sync_longer_than_the_grace_is_interrupted_and_completed_after_the_restart(
    services: Services,
    gate: TarballGate,
    fresh: Target,
    windmill: WindmillEmulator,
    tmp_path: Path,
) -> None:
    service = services.start(SHUTDOWN_GRACE_SECONDS="2")
    assert service.proc is not None
    gate.arm(fresh.workspace_id)
    cut_off = in_background(lambda: service.post("/sync", fresh.body(), timeout=2 * DEADLINE))
    gate.wait_arrived()
    os.kill(service.proc.pid, signal.SIGTERM)
    signalled = time.monotonic()
    returncode = service.proc.wait(timeout=30)
    assert returncode == 1, service.log_text()[-4000:]
    assert time.monotonic() - signalled < 10
    # The caller gets an error, never a made-up success.
    assert isinstance(cut_off.exception(timeout=30), requests.ConnectionError)
    assert "SHUTDOWN_GRACE_SECONDS (2 s) ran out" in service.log_text()
    [job] = _jobs_in_store(services.data_dir)
    assert job == ("interrupted", "shutting_down")
    gate.release()

    restarted = services.start()
    owed = restarted.get("/ready").json()["owed_runs"]
    assert [(o["workspace"], o["interrupted_jobs"]) for o in owed] == [(fresh.workspace_id, 1)]
    assert "Owed run" in restarted.get("/").text
    old_id = restarted.get("/jobs", params={"workspace": fresh.workspace_id}).json()["jobs"][0]
    assert old_id["state"] == "interrupted" and old_id["error"] == "shutting_down"
    # Windmill's next scheduled sync (or the caller's retry) of the same target:
    response = restarted.post("/sync", fresh.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert fresh.log() == made(data)
    assert_remote_is_exact_backup(fresh, windmill, tmp_path)
    assert_completed_by(restarted.get(f"/jobs/{old_id['id']}").json(), data["job_id"])
    assert restarted.get("/ready").json()["owed_runs"] == []
    assert "Owed run" not in restarted.get("/").text
    assert "owed_run_completed" in restarted.log_text()


def test_a_second_signal_ends_the_drain_at_once(
    services: Services, gate: TarballGate, fresh: Target
) -> None:
    service = services.start()
    assert service.proc is not None
    gate.arm(fresh.workspace_id)
    cut_off = in_background(lambda: service.post("/sync", fresh.body(), timeout=2 * DEADLINE))
    gate.wait_arrived()
    os.kill(service.proc.pid, signal.SIGTERM)
    wait_for(lambda: "draining for up to" in service.log_text(), "the drain to begin")
    os.kill(service.proc.pid, signal.SIGTERM)
    assert service.proc.wait(timeout=10) == 1
    assert "a second signal ended the drain" in service.log_text()
    assert isinstance(cut_off.exception(timeout=30), requests.ConnectionError)
    assert _jobs_in_store(services.data_dir) == [("interrupted", "shutting_down")]
    gate.release()


def _jobs_in_store(data_dir: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(data_dir / "jobs.sqlite3", timeout=10)) as db:
        return list(db.execute("SELECT state, error FROM jobs ORDER BY created_at"))


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
    # Its record keeps the interruption and names the sync that did its work.
    assert_completed_by(second.get(f"/jobs/{job_id}").json(), data["job_id"])
