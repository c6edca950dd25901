"""The image, proven: built from this repository and run the way docker-compose.yml runs it.

Most users never run ``make run``: they paste the compose block into their
Windmill install. So the image is built here from the Dockerfile (on a
locally made ``debian:bookworm-slim``, see ``tests/container/engine.py``),
started with the compose block's settings (read-only root, tmpfs ``/tmp``,
dropped capabilities) as its non-root user, with its data directory
bind-mounted from a temporary folder, and driven through the core end-to-end
scenarios against the test Git server and Windmill emulator on the host
(``--network host``), while a probe inside the container watches every
command line and file for the tokens.

Runs with the rest of ``make test``. It starts (and stops) a Docker engine of
its own when run as root; where no engine can run at all it prints one
``SKIPPED container test: <reason>`` line, and under CI (``CI`` set) it fails
instead of skipping.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitsync.windmill.wmill import Scope
from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, files_under, made, new_target, plain_pull
from tests.container.engine import Docker, Unavailable, base_image, cannot_run, engine, inspect
from tests.container.image import IMAGE_TAG, LOCAL_CA_DIR, REPO_ROOT, build, extra_ca_bundle
from tests.container.leak_probe import LeakProbe
from tests.container.service import UID, ContainerService, compose_run_flags, compose_service
from tests.project import metadata
from tests.servers.git_server import GitHttpServer
from tests.servers.proc_scan import needles_for, scan_tree
from tests.servers.windmill_emulator import WindmillEmulator

# The first test pays for a cold start: installing docker.io, debootstrap and a
# full image build (several minutes on 2 cores); later tests take seconds.
pytestmark = [pytest.mark.timeout(1800)]
# Skips every test here, with one line saying why, where no Docker engine can run.
pytest_plugins = ["tests.container.skip_report"]

WRONG_GIT_TOKEN = "ghp_containertest_wrong_5151515151"
WRONG_WM_TOKEN = "wm_containertest_wrong_6262626262"
NEEDLES = [
    n
    for tok in (WINDMILL_TOKEN, GIT_TOKEN, WRONG_GIT_TOKEN, WRONG_WM_TOKEN)
    for n in needles_for(tok)
]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# -- the engine, the image, the container ------------------------------------------------


@pytest.fixture(scope="module")
def docker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Docker]:
    # Whether an engine can run at all was asked before (tests/container/skip_report.py).
    with contextlib.ExitStack() as stack:
        try:
            found = stack.enter_context(engine(tmp_path_factory.mktemp("docker")))
        except Unavailable as exc:
            cannot_run(request.config, str(exc))
        yield found


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, docker: Docker) -> str:
    try:
        base = base_image(docker)
    except Unavailable as exc:
        cannot_run(request.config, str(exc))
    build(docker, base)
    return IMAGE_TAG


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_service()


@pytest.fixture(scope="module")
def container_ca(ca_pem: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test CA, readable by the container's user (mounted read-only)."""
    directory = tmp_path_factory.mktemp("container-ca")
    directory.chmod(0o755)
    path = directory / "ca.pem"
    shutil.copyfile(ca_pem, path)
    path.chmod(0o644)
    return path


def data_dir_for(root: Path, *, owner: int = UID) -> Path:
    """A data directory as the README says to make one: owned by the image's uid."""
    path = root / "data"
    path.mkdir()
    path.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(path, owner, owner)
    elif owner == UID:
        path.chmod(0o777)  # not root, so no chown: let the image's user in anyway
    return path


def make_container(
    docker: Docker,
    image: str,
    compose: dict[str, Any],
    windmill: WindmillEmulator,
    container_ca: Path,
    data_dir: Path,
    **env: str,
) -> ContainerService:
    environment = dict(compose.get("environment") or {})
    environment.update(
        {
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": "/certs/ca.pem",
            "HOST": "127.0.0.1",  # host network: stay on loopback
            "LOG_LEVEL": "DEBUG",
            # Inherited tracing must not leak credentials.
            "GIT_TRACE_REDACT": "0",
            "GIT_CURL_VERBOSE": "1",
            **env,
        }
    )
    return ContainerService(
        docker,
        image,
        data_dir=data_dir,
        env=environment,
        run_flags=compose_run_flags(compose),
        mounts=[(container_ca, "/certs/ca.pem")],
    )


@pytest.fixture(scope="module")
def svc(
    docker: Docker,
    image: str,
    compose: dict[str, Any],
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
    container_ca: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ContainerService]:
    data = data_dir_for(tmp_path_factory.mktemp("container"))
    service = make_container(docker, image, compose, windmill, container_ca, data)
    try:
        started = time.monotonic()
        service.start()
        docker.note(f"container healthy in {time.monotonic() - started:.1f}s")
        yield service
    finally:
        service.remove()


@pytest.fixture(scope="module")
def probe(svc: ContainerService) -> Iterator[LeakProbe]:
    """Watches the container for tokens from the first sync to the leak test."""
    leak_probe = LeakProbe(svc, NEEDLES).start()
    yield leak_probe
    leak_probe.kill()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# Runs in the image (as its user, read-only root) and reports what it holds.
_IMAGE_FACTS = """
import importlib.metadata, json, os, subprocess
def out(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
def holding(needle):
    found = []
    for top in ("/etc", "/usr/local", "/usr/share/ca-certificates", "/opt", "/data"):
        for root, _, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as handle:
                        if needle and needle in handle.read():
                            found.append(path)
                except OSError:
                    pass
    return found
writable = []
for path in ("/", "/etc", "/opt/windmill-git-sync", "/opt/venv", "/usr/local/bin"):
    try:
        open(os.path.join(path, ".probe"), "w").close()
        writable.append(path)
    except OSError:
        pass
print(json.dumps({
    "uid": os.getuid(),
    "node": out("node", "--version"),
    # Git runs in-process (dulwich): the image has no git binary at all.
    "git": subprocess.run(["sh", "-c", "command -v git"], capture_output=True, timeout=60).returncode,
    "ca_bundle": os.path.getsize("/etc/ssl/certs/ca-certificates.crt") > 0,
    "cli_help": out("node", os.environ["WMILL_CLI"], "--help"),
    "version": out("windmill-git-sync", "--version"),
    "dists": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()},
    "root_writable": writable,
    "extra_ca_in": holding(os.environ["CA_BODY"].encode()),
}))
"""


# -- the image -------------------------------------------------------------------------------


def test_image_is_built_as_promised(
    docker: Docker, image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = inspect(docker, image)["Config"]
    assert isinstance(config, dict)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert config["Cmd"] == ["windmill-git-sync", "serve"]
    assert "/data" in config["Volumes"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["DATA_DIR"] == "/data"
    health = config["Healthcheck"]["Test"]
    assert health[0] in ("CMD", "CMD-SHELL") and "/health" in " ".join(health)

    # Nothing the build was handed may stay in the image: the extra CA is looked for.
    ca = extra_ca_bundle(docker.log_dir / "extra-ca-check.pem")
    ca_body = "".join(ca.read_text().split("-----")[2].split())[:60] if ca is not None else ""
    facts = json.loads(
        docker.text(
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--env",
            f"CA_BODY={ca_body}",
            "--entrypoint",
            "python3",
            image,
            "-c",
            _IMAGE_FACTS,
            timeout=120,
        )
    )
    assert facts["uid"] == UID
    node_major = int(facts["node"].lstrip("v").split(".")[0])
    assert node_major >= 20, f"windmill-cli needs Node >= 20, the image has {facts['node']}"
    assert facts["git"] != 0, "`command -v git` found a git binary in the image"
    size = inspect(docker, image)["Size"]
    assert isinstance(size, int)
    with capsys.disabled():
        print(f"\nimage size: {size / 1e6:.0f} MB ({size} bytes)")
    assert size <= 300 * 10**6, f"the image is {size / 1e6:.0f} MB (at most 300 MB)"
    assert facts["ca_bundle"], "no CA certificates in the image"
    lock = json.loads((REPO_ROOT / "package-lock.json").read_text())
    pinned_cli = lock["packages"]["node_modules/windmill-cli"]["version"]
    assert re.search(rf"Version:\s+{re.escape(pinned_cli)}\b", _ANSI.sub("", facts["cli_help"]))
    locked = {
        _norm(name): version
        for name, version in re.findall(
            r"^([A-Za-z0-9_.-]+)==([^\s\\]+)",
            (REPO_ROOT / "requirements/runtime.txt").read_text(),
            re.M,
        )
    }
    installed = {_norm(name): version for name, version in facts["dists"].items()}
    assert {k: installed.get(k) for k in locked} == locked, "not installed from the lock file"
    assert set(installed) - set(locked) == {"windmill-git-sync"}, "packages not in the lock file"
    assert "waitress" in installed and "gunicorn" not in installed, "waitress is the only server"
    # One version, setup.cfg's: the installed package, `--version` and the labels.
    meta = metadata()
    assert installed["windmill-git-sync"] == meta["version"]
    assert facts["version"] == f"windmill-git-sync {meta['version']} (windmill-cli {pinned_cli})"
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == meta["version"]
    assert labels["org.opencontainers.image.title"] == meta["name"]
    assert labels["org.opencontainers.image.description"] == meta["description"]
    assert labels["org.opencontainers.image.licenses"] == meta["license"]
    assert facts["root_writable"] == [], "the root filesystem is writable"

    assert facts["extra_ca_in"] == [], f"the build's extra CA ({LOCAL_CA_DIR}) is in the image"
    history = docker.text("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
    assert not ca_body or ca_body not in history
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        if os.environ.get(key):
            assert os.environ[key] not in history


# -- the running container -------------------------------------------------------------------


def test_container_is_healthy_non_root_and_read_only(svc: ContainerService) -> None:
    assert svc.state()["Health"]["Status"] == "healthy"
    response = svc.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}

    out = svc.exec(
        "sh",
        "-c",
        "id -u; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
        " touch /etc/x 2>/dev/null && echo etc-writable;"
        " touch /opt/windmill-git-sync/x 2>/dev/null && echo app-writable;"
        " touch /tmp/x && echo tmp-ok; touch /data/x && rm /data/x && echo data-ok",
    ).stdout.decode()
    lines = out.splitlines()
    assert lines[0] == str(UID)
    assert lines[1].startswith("/usr/bin/tini -- windmill-git-sync serve")
    assert lines[2:] == ["tmp-ok", "data-ok"]


def test_first_sync_backs_up_what_wmill_pull_writes(
    svc: ContainerService,
    probe: LeakProbe,
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
    tmp_path: Path,
) -> None:
    target = new_target(windmill, git_server)
    response = svc.post("/sync", target.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["success"] is True and data["changed"] is True
    assert data["commit"] == target.log()[0]
    assert target.log() == made(data)
    assert data["added"] > 10 and data["modified"] == 0 and data["deleted"] == 0
    # The image's CLI (on its own Node) writes what the host's pinned CLI writes.
    expected = tmp_path / "plain"
    plain_pull(windmill, target.workspace_id, expected, Scope().wmill_yaml())
    tree = target.tree()
    tree.pop("README.md", None)  # the service's own note beside the backup
    assert tree == files_under(expected)


def test_incremental_then_unchanged_sync(
    svc: ContainerService, probe: LeakProbe, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    first = svc.post("/sync", target.body()).json()
    assert first["changed"] is True, first
    script = next(p for p in target.tree() if p.startswith("f/") and p.endswith(".py"))
    target.workspace.update(
        "script", script.removesuffix(".py"), content="def main():\n    return 7\n"
    )
    target.workspace.add_script("f/team/from_container", language="bash", content="echo hi\n")
    resource = next(p for p in target.tree() if p.endswith(".resource.yaml"))
    target.workspace.remove("resource", resource.removesuffix(".resource.yaml"))

    second = svc.post("/sync", target.body())

    assert second.status_code == 200, second.text
    data = second.json()
    files = {f["path"]: f["status"] for f in data["files"]}
    assert files[script] == "modified"
    assert files["f/team/from_container.sh"] == "added"
    assert files[resource] == "deleted"
    assert target.log() == made(data) + made(first)
    assert target.tree()[script] == b"def main():\n    return 7\n"

    git_server.clear_requests()
    third = svc.post("/sync", target.body())
    assert third.status_code == 200, third.text
    unchanged = third.json()
    assert unchanged["changed"] is False and unchanged["commit"] == data["commit"]
    assert target.log() == made(data) + made(first)
    assert (unchanged["added"], unchanged["modified"], unchanged["deleted"]) == (0, 0, 0)
    assert git_server.receive_pack_posts(target.repo) == []


def test_bad_tokens_fail_clearly_and_push_nothing(
    svc: ContainerService, probe: LeakProbe, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    bad_windmill = svc.post("/sync", target.body(windmill_token=WRONG_WM_TOKEN))
    assert bad_windmill.status_code == 500
    assert (
        bad_windmill.json()["message"]
        == f"Windmill rejected the token for workspace '{target.workspace_id}'"
    )
    bad_git = svc.post("/sync", target.body(git_token=WRONG_GIT_TOKEN))
    assert bad_git.status_code == 500
    assert "authentication error" in bad_git.json()["message"]
    assert target.log() == []


def test_no_token_in_command_lines_files_logs_or_responses(
    svc: ContainerService, probe: LeakProbe, docker: Docker
) -> None:
    report = probe.stop()

    assert report["sweeps"] > 100, "the probe was not looking"
    assert_probe_sees(svc)
    assert report["hits"] == [], f"tokens in command lines in the container: {report['hits']}"
    assert report["files"] == [], f"tokens in files in the container: {report['files']}"
    assert scan_tree(svc.data_dir, NEEDLES) == []
    logs = svc.logs()
    assert "POST /sync" in logs  # the service's own log did reach docker logs
    assert not [n for n in NEEDLES if n in logs.encode()], "a token reached docker logs"
    for body in svc.responses:
        assert not [n for n in NEEDLES if n in body.encode()], f"a token in a response: {body}"
    # State lives under the data volume only, owned by the image's user.
    assert (svc.data_dir / "jobs.sqlite3").is_file()
    assert {p.stat().st_uid for p in svc.data_dir.rglob("*")} == {UID}
    # Nothing written to the container's own filesystem (the mount points the
    # engine made for /certs/ca.pem aside).
    changed = [line for line in docker.text("diff", svc.name).splitlines() if line]
    assert [c for c in changed if c.split()[1] not in ("/certs", "/certs/ca.pem")] == []


def assert_probe_sees(svc: ContainerService) -> None:
    """The probe finds a planted canary (not a token) in a command line and in /tmp."""
    canary = b"wgs-canary-8e1f0c2d"
    control = LeakProbe(svc, [canary]).start()
    try:
        planted = svc.exec(
            "sh",
            "-c",
            'printf "%s" "$0" > /tmp/canary.txt; sleep 2; rm /tmp/canary.txt',
            canary.decode(),
        )
        assert planted.returncode == 0, planted.stderr
    finally:
        seen = control.stop()
    # sh forks before it execs sleep and rm; a sweep may catch that child, which
    # still carries sh's command line. Each such sighting is a real one.
    assert seen["hits"], seen
    assert {(h["exe"], h["where"]) for h in seen["hits"]} == {("sh", "cmdline")}, seen
    assert seen["files"] == ["/tmp/canary.txt"], seen


def test_docker_stop_drains_the_sync_in_flight(
    docker: Docker,
    image: str,
    compose: dict[str, Any],
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
    container_ca: Path,
    tmp_path: Path,
) -> None:
    service = make_container(docker, image, compose, windmill, container_ca, data_dir_for(tmp_path))
    target = new_target(windmill, git_server)
    windmill.set_fault("tarball", "delay:4", workspace=target.workspace_id)
    try:
        service.start()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(service.post, "/sync", target.body(), timeout=120)
            _wait_for_running_job(service, target.workspace_id)
            started = time.monotonic()
            exit_code = service.stop(grace=60)
            stopped_after = time.monotonic() - started
            response = pending.result(timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["changed"] is True
        assert target.log() == made(response.json())
        assert exit_code == 0, service.logs()[-3000:]
        assert stopped_after < 55, "docker stop had to kill the container"
    finally:
        windmill.set_fault("tarball", None, workspace=target.workspace_id)
        service.remove()


def _wait_for_running_job(service: ContainerService, workspace: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        jobs = service.get("/jobs", params={"workspace": workspace}).json().get("jobs", [])
        if any(job.get("state") == "running" for job in jobs):
            return
        time.sleep(0.1)
    raise AssertionError(f"no running sync for {workspace} after {timeout}s")


def test_data_directory_the_user_cannot_write_is_reported(
    docker: Docker,
    image: str,
    compose: dict[str, Any],
    windmill: WindmillEmulator,
    container_ca: Path,
    tmp_path: Path,
) -> None:
    """The README's chown step forgotten: the container stops and says why, it does not limp on."""
    service = make_container(
        docker, image, compose, windmill, container_ca, data_dir_for(tmp_path, owner=0)
    )
    try:
        service.start(wait_healthy=False)
        exit_code = service.wait_exit(timeout=90)
        logs = service.logs()
        assert exit_code != 0
        assert "DATA_DIR /data is not writable by uid 10001" in logs, logs[-3000:]
        assert "Permission denied" in logs and "Traceback" not in logs
    finally:
        service.remove()
