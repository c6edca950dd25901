"""Nothing lost on a bad day: divergence, bursts, faulty servers, an emptied workspace.

Every test asserts the answer a caller gets and that nothing was lost: the
remote history stays linear and keeps every earlier backup and human commit.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitsync.windmill.wmill import Scope
from tests import conftest
from tests.conftest import Target, files_under, made, new_target, plain_pull
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator


def start_service(
    root: Path, windmill: WindmillEmulator, ca_pem: Path, **env: str
) -> ServiceProcess:
    """A service of its own with quick retries, for fault injection."""
    return conftest.start_service(
        root,
        windmill,
        ca_pem,
        RETRY_ATTEMPTS="3",
        RETRY_WAIT_INITIAL="0.2",
        RETRY_MAX_SECONDS="30",
        **env,
    )


@pytest.fixture(scope="module")
def faulty(
    windmill, ca_pem: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A service with quick retries and short deadlines, for fault injection."""
    proc = start_service(
        tmp_path_factory.mktemp("faulty"), windmill, ca_pem, COMMAND_TIMEOUT="6", SYNC_TIMEOUT="60"
    )
    yield proc
    proc.stop()


def assert_linear_history_containing(target: Target, *commits: str) -> list[str]:
    log = target.log()
    for child, parent in itertools.pairwise(log):
        assert target.git_server.parents(target.repo, child) == [parent], "history not linear"
    assert target.git_server.parents(target.repo, log[-1]) == []
    missing = [c for c in commits if c not in log]
    assert not missing, f"commits lost: {missing}"
    return log


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- the remote moved on --------------------------------------------------------------


def test_human_commit_between_syncs_is_kept(
    service: ServiceProcess, target: Target, windmill, git_server: GitHttpServer, tmp_path: Path
) -> None:
    first = service.post("/sync", target.body()).json()["commit"]
    human = git_server.clone_and_commit(
        target.repo,
        {
            "README.md": b"# Backups of our Windmill\n",
            "f/team/hello_py.py": b"# edited by hand in Git\n",
        },
        "docs and a hand edit",
    )
    target.workspace.add_script("f/team/after_human", language="bash", content="echo 1\n")

    response = service.post("/sync", target.body())

    assert response.status_code == 200, response.text
    new = response.json()["commit"]
    log = assert_linear_history_containing(target, first, human)
    assert log[0] == new and log.index(new) < log.index(human) < log.index(first)
    tree = target.tree()
    assert tree["README.md"] == b"# Backups of our Windmill\n"
    # Windmill is the source of truth for its own files.
    plain_pull(windmill, target.workspace_id, tmp_path / "plain", Scope().wmill_yaml())
    assert tree["f/team/hello_py.py"] == files_under(tmp_path / "plain")["f/team/hello_py.py"]
    assert {"path": "f/team/hello_py.py", "status": "modified"} in response.json()["files"]


def test_two_replicas_syncing_one_workspace_at_once(
    target: Target, windmill, ca_pem: Path, tmp_path: Path
) -> None:
    replicas = [start_service(tmp_path / f"replica{i}", windmill, ca_pem) for i in (1, 2)]
    try:
        commits: list[str] = []
        for round_ in range(3):
            target.workspace.add_script(
                f"f/team/round_{round_}", language="bash", content=f"echo {round_}\n"
            )
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                responses = list(pool.map(lambda s: s.post("/sync", target.body()), replicas))
            assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
            commits += [r.json()["commit"] for r in responses if r.json()["changed"]]
        log = assert_linear_history_containing(target, *commits)
        assert "f/team/round_2.sh" in target.tree()
        # Each round's change was committed once, not once per replica.
        assert 3 <= len(log) <= 6
    finally:
        for replica in replicas:
            replica.stop()


# -- bursts -----------------------------------------------------------------------------


def test_twenty_requests_for_one_target_coalesce(service: ServiceProcess, target: Target) -> None:
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: service.post("/sync", target.body()), range(20)))

    assert [r.status_code for r in responses] == [200] * 20
    data = [r.json() for r in responses]
    assert len({d["job_id"] for d in data}) < 20
    assert any(d["coalesced"] for d in data)
    # Requests that shared the first run all report its change; one commit in all.
    changed = [d for d in data if d["changed"]]
    assert len({d["commit"] for d in changed}) == 1
    assert target.log() == made(changed[0])
    assert {d["commit"] for d in data} == {target.log()[0]}


def test_twenty_requests_for_five_targets(service: ServiceProcess, windmill, git_server) -> None:
    targets = [new_target(windmill, git_server) for _ in range(5)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        responses = list(
            pool.map(lambda i: service.post("/sync", targets[i % 5].body()), range(20))
        )
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses]
    by_target = {r.json()["workspace"]: r.json() for r in responses if r.json()["changed"]}
    for t in targets:
        assert t.log() == made(by_target[t.workspace_id])
        assert_linear_history_containing(t)


def test_a_full_queue_answers_503_with_retry_after(
    windmill, git_server, ca_pem: Path, tmp_path: Path
) -> None:
    proc = start_service(tmp_path, windmill, ca_pem, MAX_CONCURRENT_SYNCS="1", MAX_QUEUED_SYNCS="1")
    targets = [new_target(windmill, git_server) for _ in range(3)]
    windmill.set_fault("tarball", "delay:3", workspace=targets[0].workspace_id)
    try:
        first = proc.post("/sync", targets[0].body(wait=False))
        wait_for(
            lambda: proc.get(f"/jobs/{first.json()['job_id']}").json()["state"] == "running",
            what="the first job to start",
        )
        second = proc.post("/sync", targets[1].body(wait=False))
        third = proc.post("/sync", targets[2].body(wait=False))
        assert (first.status_code, second.status_code) == (202, 202)
        assert third.status_code == 503
        assert third.headers["Retry-After"].isdigit()
        assert third.json()["error"] == "busy"
        for accepted, t in ((first, targets[0]), (second, targets[1])):
            job_id = accepted.json()["job_id"]
            wait_for(
                lambda j=job_id: proc.get(f"/jobs/{j}").json()["state"] == "succeeded",
                what="queued jobs to finish",
            )
            assert t.log()[0] == proc.get(f"/jobs/{job_id}").json()["commit"]
        assert targets[2].log() == []
    finally:
        windmill.set_fault("tarball", None, workspace=targets[0].workspace_id)
        proc.stop()


# -- asynchronous jobs --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["body", "prefer-header"])
def test_async_sync_returns_a_job_to_follow(
    service: ServiceProcess, target: Target, how: str
) -> None:
    if how == "body":
        response = service.post("/sync", target.body(wait=False))
    else:
        response = service.post("/sync", target.body(), headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.headers["Location"] == f"/jobs/{job_id}"

    wait_for(
        lambda: service.get(f"/jobs/{job_id}").json()["state"] == "succeeded",
        what="the job to succeed",
    )
    job = service.get(f"/jobs/{job_id}").json()
    assert job["commit"] == target.log()[0]
    assert job["changed"] is True and job["added"] > 0 and job["phase"] == "done"
    listed = service.get(f"/jobs?workspace={target.workspace_id}").json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert service.get("/jobs/" + "0" * 32).status_code == 404


# -- Windmill misbehaving -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "fault", "fragment"),
    [
        ("tarball", "500", "HTTP 500"),
        ("tarball", "drop", "Could not connect to Windmill"),
        ("whoami", "500", "HTTP 500 to the login check"),
    ],
    ids=["tarball-500", "tarball-dropped", "whoami-500"],
)
def test_windmill_failures_are_retried_then_reported(
    faulty: ServiceProcess, target: Target, windmill, endpoint: str, fault: str, fragment: str
) -> None:
    first = faulty.post("/sync", target.body()).json()["commit"]
    target.workspace.add_script("f/team/unsaved", language="bash", content="echo 1\n")
    windmill.set_fault(
        endpoint, fault, workspace=None if endpoint == "whoami" else target.workspace_id
    )
    windmill.clear_requests()
    try:
        response = faulty.post("/sync", target.body())
    finally:
        windmill.set_fault(
            endpoint, None, workspace=None if endpoint == "whoami" else target.workspace_id
        )
    assert response.status_code == 500
    data = response.json()
    assert fragment in data["message"]
    assert data["attempts"] == 3 and "after 3 attempts" in data["message"]
    assert len([r for r in windmill.requests if r.endpoint == endpoint]) >= 3
    assert target.log()[0] == first  # the previous backup is intact


def test_a_windmill_hiccup_is_retried_to_success(
    faulty: ServiceProcess, target: Target, windmill
) -> None:
    windmill.set_fault("tarball", "500", workspace=target.workspace_id)
    windmill.clear_requests()

    def heal() -> None:
        wait_for(
            lambda: any(r.endpoint == "tarball" and r.status == 500 for r in windmill.requests),
            what="a failed tarball request",
        )
        windmill.set_fault("tarball", None, workspace=target.workspace_id)

    healer = threading.Thread(target=heal)
    healer.start()
    response = faulty.post("/sync", target.body())
    healer.join()
    assert response.status_code == 200, response.text
    assert target.log()[0] == response.json()["commit"]


def test_a_hanging_windmill_times_out_and_leaves_a_usable_copy(
    faulty: ServiceProcess, target: Target, windmill
) -> None:
    first = faulty.post("/sync", target.body()).json()["commit"]
    windmill.set_fault("tarball", "hang", workspace=target.workspace_id)
    try:
        response = faulty.post("/sync", target.body())
    finally:
        windmill.set_fault("tarball", None, workspace=target.workspace_id)
    assert response.status_code == 500
    assert response.json()["error"] == "timeout"
    assert "during the Windmill pull" in response.json()["message"]
    assert not _children_in(faulty.data_dir), "a timed-out child survived"
    target.workspace.add_script("f/team/after_hang", language="bash", content="echo 1\n")
    retry = faulty.post("/sync", target.body())
    assert retry.status_code == 200, retry.text
    assert_linear_history_containing(target, first)


def _children_in(data_dir: Path) -> list[int]:
    """Processes whose working directory is inside ``data_dir``."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cwd = (proc / "cwd").resolve()
            except OSError:
                continue
            if data_dir.resolve() in cwd.parents:
                found.append(int(proc.name))
    return found


# -- the Git host misbehaving -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fragment", "attempts"),
    [
        ("down", "could not reach the Git host", 3),
        ("error500", "answered HTTP 500", 3),
    ],
    ids=["down", "http-500"],
)
def test_git_host_failures_are_retried_then_reported(
    faulty: ServiceProcess,
    target: Target,
    git_server: GitHttpServer,
    mode: str,
    fragment: str,
    attempts: int,
) -> None:
    first = faulty.post("/sync", target.body()).json()["commit"]
    target.workspace.add_script("f/team/pending", language="bash", content="echo 1\n")
    git_server.mode = mode
    try:
        response = faulty.post("/sync", target.body())
    finally:
        git_server.mode = "normal"
    assert response.status_code == 500
    assert fragment in response.json()["message"]
    assert response.json()["attempts"] == attempts
    assert target.log()[0] == first
    recovered = faulty.post("/sync", target.body())
    assert recovered.status_code == 200
    assert_linear_history_containing(target, first)
    assert "f/team/pending.sh" in target.tree()


def test_a_slow_git_host_still_gets_the_backup(
    faulty: ServiceProcess, target: Target, git_server: GitHttpServer
) -> None:
    git_server.delay, git_server.mode = 0.5, "slow"
    try:
        response = faulty.post("/sync", target.body())
    finally:
        git_server.mode, git_server.delay = "normal", 0.0
    assert response.status_code == 200, response.text
    assert target.log()[0] == response.json()["commit"]


def test_a_refused_git_token_is_not_retried(
    faulty: ServiceProcess, target: Target, git_server: GitHttpServer
) -> None:
    git_server.clear_requests()
    response = faulty.post("/sync", target.body(git_token="ghp_revoked_000000000000"))
    assert response.status_code == 500
    assert "authentication error" in response.json()["message"]
    assert "attempts" not in response.json()
    # One ls-remote conversation, not three.
    assert len([r for r in git_server.requests if not r.authorized and r.username]) == 1


# -- a workspace that suddenly comes back empty ---------------------------------------------------


def test_an_emptied_workspace_is_not_pushed_without_consent(
    service: ServiceProcess, target: Target
) -> None:
    first = service.post("/sync", target.body()).json()["commit"]
    target.workspace.clear()

    refused = service.post("/sync", target.body())

    assert refused.status_code == 409
    data = refused.json()
    assert data["error"] == "mass_deletion_refused"
    assert "allow_mass_deletion" in data["message"] and "would delete" in data["message"]
    assert target.log()[0] == first
    assert service.get(f"/jobs/{data['job_id']}").json()["state"] == "refused"

    accepted = service.post("/sync", target.body(allow_mass_deletion=True))
    assert accepted.status_code == 200
    assert accepted.json()["deleted"] > 0
    assert_linear_history_containing(target, first)


def test_the_brake_counts_a_share_of_the_backup(
    service: ServiceProcess, windmill, git_server
) -> None:
    target = new_target(windmill, git_server, seed=False)
    for i in range(10):
        target.workspace.add_script(f"f/bulk/s{i}", language="bash", content=f"echo {i}\n")
    service.post("/sync", target.body())
    for i in range(4):  # 8 of 20 files (code + metadata): under half
        target.workspace.delete("script", f"f/bulk/s{i}")
    assert service.post("/sync", target.body()).status_code == 200
    for i in range(4, 9):  # 10 of the remaining 12 files
        target.workspace.delete("script", f"f/bulk/s{i}")
    assert service.post("/sync", target.body()).status_code == 409


# -- the disk ---------------------------------------------------------------------------------


def test_a_file_too_large_for_the_disk_fails_cleanly(
    windmill, git_server, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    proc = start_service(tmp_path, windmill, ca_pem, MAX_FILE_BYTES="200000")
    try:
        first = proc.post("/sync", target.body()).json()["commit"]
        target.workspace.add_script(
            "f/team/huge", language="bash", content="echo x\n" + "# padding\n" * 40_000
        )
        response = proc.post("/sync", target.body())
        assert response.status_code == 500
        assert "no space left" in response.json()["message"]
        assert target.log()[0] == first
        target.workspace.delete("script", "f/team/huge")
        target.workspace.add_script("f/team/small", language="bash", content="echo y\n")
        assert proc.post("/sync", target.body()).status_code == 200
        assert_linear_history_containing(target, first)
    finally:
        proc.stop()


def test_too_little_free_space_refuses_before_any_work(
    windmill, git_server, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    proc = start_service(tmp_path, windmill, ca_pem, MIN_FREE_BYTES=str(10**18))
    windmill.clear_requests()
    try:
        response = proc.post("/sync", target.body())
    finally:
        proc.stop()
    assert response.status_code == 507
    assert response.json()["error"] == "insufficient_storage"
    assert [r for r in windmill.requests if r.workspace == target.workspace_id] == []
