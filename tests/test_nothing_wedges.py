"""Nothing wedges a target: a full disk, a burst of webhooks, a restore beside a sync.

Each test brings the fault about for real (a tmpfs filled to its last byte,
80 simultaneous requests against a slow Git host, a restore and a sync of one
workspace at once, a hard file-size limit the service may not raise) and
asserts what a caller and an operator see.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import conftest
from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, Target, new_target
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

# What the issue asks of the liveness probe under every fault here.
HEALTH_BOUND_SECONDS = 1.0
SYNC_TIMEOUT = 60


class HealthProbe:
    """GETs /health every 0.2 s from its own thread and keeps each answer's time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                response = requests.get(self.url + "/health", timeout=30)
                if response.status_code != 200:
                    self.failures.append(f"HTTP {response.status_code}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.times.append(time.monotonic() - started)
            self._stop.wait(0.2)

    def assert_always_answered_quickly(self) -> None:
        assert self.times, "the probe never ran"
        assert not self.failures, self.failures
        slow = [round(t, 2) for t in self.times if t > HEALTH_BOUND_SECONDS]
        assert not slow, f"/health took more than {HEALTH_BOUND_SECONDS} s: {slow}"


@contextlib.contextmanager
def small_tmpfs(mountpoint: Path, size: str = "48m") -> Iterator[Path]:
    """A real filesystem of its own that can fill up; the test fails if none can be made."""
    mountpoint.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"could not mount a tmpfs for DATA_DIR (these tests need root and mount): "
            f"{done.stderr.strip()}"
        )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill_to_the_last_byte(directory: Path) -> Path:
    """Write a file until the filesystem refuses even one more byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return filler


def start_on(root: Path, windmill: WindmillEmulator, ca_pem: Path, **env: str) -> ServiceProcess:
    return conftest.start_service(
        root,
        windmill,
        ca_pem,
        SYNC_TIMEOUT=str(SYNC_TIMEOUT),
        RETRY_ATTEMPTS="1",
        MIN_FREE_BYTES=str(1024 * 1024),
        **env,
    )


def wait_for(predicate: Any, what: str, timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_job(proc: ServiceProcess, workspace: str, kind: str = "sync") -> str | None:
    jobs = proc.get("/jobs", params={"workspace": workspace}).json()["jobs"]
    for job in jobs:
        if job["state"] == "running" and job.get("kind", "sync") == kind:
            return str(job["id"])
    return None


# -- 1. a failing job store -------------------------------------------------------------


def test_a_data_dir_filled_mid_sync_answers_the_caller_and_recovers_without_a_restart(
    windmill: WindmillEmulator, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    with small_tmpfs(tmp_path / "data") as data:
        proc = start_on(tmp_path, windmill, ca_pem)
        try:
            assert proc.post("/sync", target.body()).status_code == 200
            target.workspace.add_script("f/team/while_full", language="bash", content="echo 1\n")
            windmill.set_fault("tarball", "delay:4", workspace=target.workspace_id)
            with HealthProbe(proc.url) as probe, concurrent.futures.ThreadPoolExecutor(1) as pool:
                asked = time.monotonic()
                pending = pool.submit(proc.post, "/sync", target.body(), timeout=SYNC_TIMEOUT + 30)
                job_id = wait_for(
                    lambda: running_job(proc, target.workspace_id), "the sync to start"
                )
                filler = fill_to_the_last_byte(data)
                answer = pending.result()
                answered_after = time.monotonic() - asked
                windmill.set_fault("tarball", None, workspace=target.workspace_id)

                # The caller got an answer, within SYNC_TIMEOUT, and it is no success.
                assert answered_after < SYNC_TIMEOUT, answered_after
                assert answer.status_code >= 500, answer.text
                assert answer.json()["success"] is False
                assert answer.json()["job_id"] == job_id
                ready = proc.get("/ready")
                assert ready.status_code == 503
                assert any("DATA_DIR" in p and "full" in p for p in ready.json()["problems"]), (
                    ready.json()
                )

                # Space is back: the next sync backs the change up, no restart.
                filler.unlink()
                again = proc.post("/sync", target.body(), timeout=SYNC_TIMEOUT + 30)
                assert again.status_code == 200, again.text
                assert "f/team/while_full.sh" in target.tree()
            probe.assert_always_answered_quickly()
            assert proc.get("/ready").status_code == 200
            # The failed job's record was written once DATA_DIR took it again.
            record = proc.get(f"/jobs/{job_id}").json()
            assert record["state"] == "failed" and record["error"], record
            assert proc.proc is not None and proc.proc.poll() is None
        finally:
            windmill.set_fault("tarball", None, workspace=target.workspace_id)
            proc.stop()


def test_a_job_store_that_cannot_be_written_refuses_with_retry_after(
    windmill: WindmillEmulator, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    with small_tmpfs(tmp_path / "data") as data:
        proc = start_on(tmp_path, windmill, ca_pem)
        try:
            with HealthProbe(proc.url) as probe:
                filler = fill_to_the_last_byte(data)
                asked = time.monotonic()
                refused = proc.post("/sync", target.body(), timeout=SYNC_TIMEOUT + 30)
                assert time.monotonic() - asked < SYNC_TIMEOUT
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"] == "job_store_unavailable"
                assert int(refused.headers["Retry-After"]) > 0
                problems = proc.get("/ready").json()["problems"]
                assert any("DATA_DIR" in p and "full" in p for p in problems), problems

                filler.unlink()
                again = proc.post("/sync", target.body(), timeout=SYNC_TIMEOUT + 30)
                assert again.status_code == 200, again.text
                assert again.json()["changed"] is True
            probe.assert_always_answered_quickly()
            assert proc.get(f"/jobs/{again.json()['job_id']}").json()["state"] == "succeeded"
        finally:
            proc.stop()


# -- 2. a burst of webhooks -------------------------------------------------------------


def test_a_burst_of_80_syncs_against_a_slow_git_host_never_starves_health(
    windmill: WindmillEmulator, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    proc = start_on(tmp_path, windmill, ca_pem)
    git_server.delay, git_server.mode = 0.5, "slow"
    try:
        with (
            HealthProbe(proc.url) as probe,
            concurrent.futures.ThreadPoolExecutor(80) as pool,
        ):
            answers = list(
                pool.map(
                    lambda _: proc.post("/sync", target.body(), timeout=SYNC_TIMEOUT + 60),
                    range(80),
                )
            )
    finally:
        git_server.mode, git_server.delay = "normal", 0.0
    try:
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 202, 503}, codes
        assert 200 in codes, codes
        for answer in answers:
            if answer.status_code == 202:
                assert answer.headers["Location"] == f"/jobs/{answer.json()['job_id']}"
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) > 0
        probe.assert_always_answered_quickly()
        # Those told to poll find their job finished.
        for job_id in {a.json()["job_id"] for a in answers if a.status_code == 202}:
            record = wait_for(
                lambda j=job_id: (r := proc.get(f"/jobs/{j}").json())["state"] == "succeeded" and r,
                "a polled job to finish",
            )
            assert record["phase"] == "done"
        assert "f/team/hello_py.py" in target.tree()
    finally:
        proc.stop()


# -- 3. a "*" sync that backed up nothing -----------------------------------------------


def test_a_star_sync_whose_token_lists_no_workspace_fails(
    service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    token = "wm_token_that_sees_nothing_0123456789"
    windmill.add_token(token, username="nobody", email="nobody@example.com", workspaces=set())
    try:
        response = service.post("/sync", target.body(windmill_token=token, workspace="*"))
    finally:
        windmill.remove_token(token)
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["success"] is False and data["error"] == "no_workspaces"
    assert "nothing was backed up" in data["message"]
    assert service.get(f"/jobs/{data['job_id']}").json()["state"] == "failed"
    assert target.log() == []
    metrics = service.get("/metrics").text
    assert not any(
        line.startswith("windmill_git_sync_last_success_timestamp_seconds")
        and '"*@' in line
        and f"/{target.repo}.git#" in line
        for line in metrics.splitlines()
    )


def test_a_star_sync_reports_each_workspace_and_one_failure_spares_the_others(
    service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    a, b = new_target(windmill, git_server), new_target(windmill, git_server)
    token = "wm_token_for_two_workspaces_98765"
    windmill.add_token(
        token,
        username="admin",
        email="admin@windmill.dev",
        workspaces={a.workspace_id, b.workspace_id},
    )
    windmill.set_fault("tarball", "500", workspace=a.workspace_id)
    try:
        response = service.post("/sync", a.body(windmill_token=token, workspace="*"))
    finally:
        windmill.set_fault("tarball", None, workspace=a.workspace_id)
        windmill.remove_token(token)
    assert response.status_code >= 500, response.text
    outcomes = {w["workspace"]: w for w in response.json()["workspaces"]}
    assert outcomes[a.workspace_id]["success"] is False
    assert outcomes[b.workspace_id]["success"] is True
    assert f"{b.workspace_id}/f/team/hello_py.py" in a.tree()


# -- 4. restores and syncs of one workspace ---------------------------------------------


def test_a_restore_and_a_sync_of_one_workspace_never_overlap(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    first = service.post("/sync", target.body()).json()["commit"]
    scripts = [f"f/team/drill_{i}" for i in range(4)]
    for path in scripts:
        target.workspace.add_script(path, language="bash", content="echo backed-up\n")
    backed_up = service.post("/sync", target.body()).json()["commit"]
    assert backed_up != first
    for path in scripts:
        target.workspace.update("script", path, content="echo edited-after\n")
    # Each write of the restore takes a second: a sync beside it would see half of it.
    windmill.set_fault("scripts/create", "delay:1", workspace=target.workspace_id)
    restore = {
        "windmill_token": WINDMILL_TOKEN,
        "git_remote_url": target.remote_url,
        "git_token": GIT_TOKEN,
        "workspace": target.workspace_id,
        "git_ref": backed_up,
        "apply": True,
        "includes": ["f/team/drill_*"],
    }
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            restoring = pool.submit(service.post, "/restore", restore)
            restore_id = wait_for(
                lambda: running_job(service, target.workspace_id, "restore"),
                "the restore to start",
            )
            syncing = pool.submit(service.post, "/sync", target.body())
            restored, synced = restoring.result(), syncing.result()
    finally:
        windmill.set_fault("scripts/create", None, workspace=target.workspace_id)
    assert restored.status_code == 200, restored.text
    assert synced.status_code == 200, synced.text
    assert restored.json()["job_id"] == restore_id
    assert {i["path"] for i in restored.json()["items"]} == set(scripts)
    # The sync ran after the whole restore: the backup holds all of it, no half.
    tree = target.tree()
    assert {tree[f"{p}.sh"] for p in scripts} == {b"echo backed-up\n"}, synced.json()
    record = service.get(f"/jobs/{restore_id}").json()
    assert record["kind"] == "restore" and record["state"] == "succeeded"
    assert {i["path"] for i in record["result"]["items"]} == set(scripts)
    # A restore is not a backup: the status page's targets count syncs only.
    assert all(j["kind"] == "sync" for j in service.get("/jobs").json()["jobs"][:1])


# -- 5. a limit that cannot be applied --------------------------------------------------


def test_max_file_bytes_that_cannot_be_applied_is_said_at_start_and_in_ready(
    windmill: WindmillEmulator, ca_pem: Path, tmp_path: Path
) -> None:
    # A real hard RLIMIT_FSIZE below MAX_FILE_BYTES, and no CAP_SYS_RESOURCE to raise it.
    limited = [
        "prlimit",
        "--fsize=200000000:200000000",
        "setpriv",
        "--inh-caps=-sys_resource",
        "--bounding-set=-sys_resource",
        "--",
    ]
    proc = ServiceProcess(
        data_dir=tmp_path / "data",
        log_path=tmp_path / "service.log",
        env={"WINDMILL_BASE_URL": windmill.base_url, "MAX_FILE_BYTES": "500000000"},
        prefix=limited,
    ).start()
    try:
        limit = proc.get("/ready").json()["limits"]["max_file_bytes"]
        assert limit["configured"] == 500000000
        assert limit["enforced"] is False
        assert "CAP_SYS_RESOURCE" in limit["problem"]
        warnings = [
            json.loads(line)
            for line in proc.log_text().splitlines()
            if line.startswith("{") and "limit_not_applied" in line
        ]
        assert warnings and warnings[0]["level"] == "warning", proc.log_text()[-2000:]
    finally:
        proc.stop()
    # Where it can be applied, /ready says it is in force.
    fine = conftest.start_service(tmp_path / "fine", windmill, MAX_FILE_BYTES="500000000")
    try:
        limit = fine.get("/ready").json()["limits"]["max_file_bytes"]
        assert limit == {"configured": 500000000, "enforced": True}
    finally:
        fine.stop()
