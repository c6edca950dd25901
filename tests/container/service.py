"""The service running in its image, started with the settings of docker-compose.yml.

``compose_run_flags`` turns the compose service block users paste into the
``docker run`` flags that mean the same, so the test runs the container the
way ``docker compose up`` would (read-only root, tmpfs, dropped capabilities,
...). Only the network differs: the test's Git server and Windmill emulator
listen on the host's loopback, so the container shares the host's network.
"""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.container.engine import LABEL, Docker
from tests.servers.service_process import RecordingClient

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE = "windmill-git-sync"  # the service's name in docker-compose.yml and the README
UID = 10001  # the image's user; the data volume must be writable by it
_names = itertools.count(1)

# Compose keys and how each becomes a `docker run` flag. Keys handled elsewhere
# (build, image, volumes, expose, environment, restart, stop_grace_period) are not
# flags the test can mirror one to one.
_HANDLED_ELSEWHERE = {
    "build",
    "image",
    "volumes",
    "expose",
    "environment",
    "restart",
    "stop_grace_period",
}


def compose_service() -> dict[str, Any]:
    """The service block of the repository's docker-compose.yml."""
    data = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    service = data["services"][SERVICE]
    assert isinstance(service, dict)
    return service


def compose_run_flags(service: Mapping[str, Any]) -> list[str]:
    flags: list[str] = []
    unknown = set(service) - _HANDLED_ELSEWHERE - {
        "read_only", "tmpfs", "cap_drop", "cap_add", "security_opt", "ulimits", "init", "user",
    }  # fmt: skip
    if unknown:
        raise ValueError(f"docker-compose.yml keys the container test does not mirror: {unknown}")
    if service.get("read_only"):
        flags.append("--read-only")
    if service.get("init"):
        flags.append("--init")
    if "user" in service:
        flags += ["--user", str(service["user"])]
    for key, flag in (
        ("tmpfs", "--tmpfs"),
        ("cap_drop", "--cap-drop"),
        ("cap_add", "--cap-add"),
        ("security_opt", "--security-opt"),
    ):
        values = service.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            flags += [flag, str(value)]
    for name, value in (service.get("ulimits") or {}).items():
        if isinstance(value, Mapping):
            flags += ["--ulimit", f"{name}={value['soft']}:{value['hard']}"]
        else:
            flags += ["--ulimit", f"{name}={value}"]
    return flags


def free_port() -> int:
    """A port nobody listens on now; the container (host network) binds it right after."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ContainerService(RecordingClient):
    """One container of the image, serving on 127.0.0.1:<port> of the host."""

    def __init__(
        self,
        docker: Docker,
        image: str,
        *,
        data_dir: Path,
        env: Mapping[str, str],
        run_flags: Sequence[str],
        mounts: Sequence[tuple[Path, str]] = (),
    ) -> None:
        self.docker = docker
        self.image = image
        self.data_dir = data_dir
        self.env = dict(env)
        self.run_flags = list(run_flags)
        self.mounts = list(mounts)
        self.name = f"wgs-test-{next(_names)}-{time.monotonic_ns() % 10**8}"
        self.url = ""
        self.responses: list[str] = []  # every body seen, for leak scans
        self.started = False

    def start(self, *, wait_healthy: bool = True, timeout: float = 120) -> ContainerService:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [
            "run", "--detach",
            "--name", self.name,
            "--label", f"{LABEL}=1",
            "--network", "host",
            "--volume", f"{self.data_dir}:/data",
            # The image's HEALTHCHECK command, probed often enough for a test.
            "--health-interval", "1s",
            "--health-start-period", "60s",
            *self.run_flags,
        ]  # fmt: skip
        for source, target in self.mounts:
            args += ["--volume", f"{source}:{target}:ro"]
        for key, value in {**self.env, "PORT": str(port)}.items():
            args += ["--env", f"{key}={value}"]
        args.append(self.image)
        self.docker.run(*args, timeout=60)
        self.started = True
        if wait_healthy:
            self.wait_healthy(timeout)
        return self

    def state(self) -> dict[str, Any]:
        out = self.docker.text("inspect", "--format", "{{json .State}}", self.name)
        state = json.loads(out)
        assert isinstance(state, dict)
        return state

    def wait_healthy(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = self.state()
            if not state.get("Running"):
                raise RuntimeError(
                    f"container exited ({state.get('ExitCode')}) before it was healthy:\n"
                    f"{self.logs()[-4000:]}"
                )
            if (state.get("Health") or {}).get("Status") == "healthy":
                return
            time.sleep(0.5)
        raise RuntimeError(f"container not healthy after {timeout}s:\n{self.logs()[-4000:]}")

    def wait_exit(self, timeout: float = 60) -> int:
        result = self.docker.run("wait", self.name, timeout=timeout)
        return int(result.stdout.decode().strip())

    def logs(self) -> str:
        result = self.docker.run("logs", self.name, check=False, timeout=60)
        return (result.stdout + result.stderr).decode(errors="replace")

    def exec(
        self, *args: str, input: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        flags = ["--interactive"] if input is not None else []
        return self.docker.run(
            "exec", *flags, self.name, *args, input=input, timeout=timeout, check=False
        )

    def stop(self, grace: int = 60) -> int:
        """``docker stop -t <grace>``; returns the container's exit code."""
        self.docker.run("stop", "--time", str(grace), self.name, timeout=grace + 60)
        return int(self.state()["ExitCode"])

    def remove(self) -> None:
        if self.started:
            self.docker.run("rm", "--force", "--volumes", self.name, check=False, timeout=120)
            self.started = False
