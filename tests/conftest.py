"""Real servers and the real service for the end-to-end tests.

Session-wide: one throwaway CA, one HTTPS Git server (git http-backend), one
Windmill API emulator and one service process (waitress, as `make run` starts
it). Each test gets its own workspace and repository, so tests never share
state through them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.servers.alert_sink import AlertSink
from tests.servers.git_server import GitHttpServer
from tests.servers.proc_scan import ProcScanner, needles_for
from tests.servers.service_process import WMILL_CLI, ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator, Workspace

WINDMILL_TOKEN = "wm_tok_9f8e7d6c5b4a39281706f5e4"
GIT_TOKEN = "ghp_testtoken_0123456789abcdefABCDEF"
_counter = itertools.count(1)


@pytest.fixture(autouse=True)
def _no_real_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Any code that falls back to the real home directory fails loudly.
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def git_server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttpServer]:
    server = GitHttpServer(tmp_path_factory.mktemp("git-server"), token=GIT_TOKEN, ca=ca)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def windmill() -> Iterator[WindmillEmulator]:
    emulator = WindmillEmulator()
    emulator.start()
    emulator.add_token(WINDMILL_TOKEN)
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def scanner() -> Iterator[ProcScanner]:
    """Watches every process's command line for the test tokens, all session long."""
    scan = ProcScanner(needles_for(WINDMILL_TOKEN) + needles_for(GIT_TOKEN))
    scan.start()
    yield scan
    scan.stop()


@pytest.fixture(scope="module")
def sink() -> Iterator[AlertSink]:
    s = AlertSink()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture(scope="session")
def service(
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
    ca_pem: Path,
    scanner: ProcScanner,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    # Inherited tracing must not leak credentials (security notes T11).
    proc = start_service(
        tmp_path_factory.mktemp("service"),
        windmill,
        ca_pem,
        GIT_TRACE_REDACT="0",
        GIT_CURL_VERBOSE="1",
    )
    yield proc
    proc.stop()


def start_service(
    root: Path, windmill: WindmillEmulator, ca_pem: Path | None = None, **env: str
) -> ServiceProcess:
    """A service of its own (data under ``root``), for settings the shared one lacks."""
    base = {"WINDMILL_BASE_URL": windmill.base_url}
    if ca_pem is not None:
        base["GIT_SSL_CAINFO"] = str(ca_pem)
    proc = ServiceProcess(
        data_dir=root / "data", log_path=root / "service.log", env={**base, **env}
    )
    return proc.start()


# The one-shot command line, installed beside the interpreter running the tests.
CLI = Path(sys.executable).parent / "windmill-git-sync"


def cli_env(home: Path, windmill: WindmillEmulator, ca_pem: Path, **extra: str) -> dict[str, str]:
    """An environment for the one-shot command, built from scratch like the service's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "DATA_DIR": str(home / "data"),
        "WINDMILL_BASE_URL": windmill.base_url,
        "GIT_SSL_CAINFO": str(ca_pem),
        **extra,
    }


@dataclass
class Target:
    """One workspace in the emulator and one empty repository on the Git server."""

    workspace: Workspace
    workspace_id: str
    repo: str
    remote_url: str
    git_server: GitHttpServer

    def body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "windmill_token": WINDMILL_TOKEN,
            "git_remote_url": self.remote_url,
            "git_token": GIT_TOKEN,
            "workspace": self.workspace_id,
        }
        body.update(overrides)
        return body

    def log(self, branch: str = "main") -> list[str]:
        return self.git_server.log(self.repo, branch)

    def tree(self, ref: str = "main") -> dict[str, bytes]:
        return self.git_server.read_tree(self.repo, ref)


def new_target(windmill: WindmillEmulator, git_server: GitHttpServer, seed: bool = True) -> Target:
    n = next(_counter)
    workspace_id = f"ws{n}"
    repo = f"backup{n}"
    ws = windmill.workspace(workspace_id)
    if seed:
        ws.seed_basic()
    git_server.create_repo(repo)
    return Target(ws, workspace_id, repo, git_server.url(repo), git_server)


@pytest.fixture
def target(windmill: WindmillEmulator, git_server: GitHttpServer) -> Target:
    return new_target(windmill, git_server)


def plain_pull(windmill: WindmillEmulator, workspace_id: str, dest: Path, wmill_yaml: str) -> None:
    """What `wmill sync pull` itself writes for this workspace and scope."""
    dest.mkdir(parents=True)
    bare_cli_pull(windmill, workspace_id, dest, wmill_yaml, timeout=120)


def bare_cli_pull(
    windmill: WindmillEmulator,
    workspace_id: str,
    dest: Path,
    wmill_yaml: str,
    *args: str,
    timeout: float = 280,
) -> subprocess.CompletedProcess[str]:
    """The unmodified pinned CLI pulling into ``dest``, run the way a user runs it."""
    (dest / "wmill.yaml").write_text(wmill_yaml)
    home = dest.parent / (dest.name + "-home")
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "WMILL_CONFIG_DIR": str(home / "config"),
        "WM_TOKEN": WINDMILL_TOKEN,
        "WM_WORKSPACE": workspace_id,
        "BASE_INTERNAL_URL": windmill.base_url,
    }
    return subprocess.run(
        ["node", str(WMILL_CLI), "sync", "pull", "--yes", *args],
        cwd=dest,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "runs_last: run after every other test (scans what the whole session left)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)


def made(data: dict[str, Any]) -> list[str]:
    """The commits a sync answer says it made, newest first (as `git log` lists them)."""
    return [c["commit"] for c in reversed(data.get("commits", []))]
