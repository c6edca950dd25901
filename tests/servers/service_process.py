"""The real service, started the way `make run` and the image start it.

``windmill-git-sync serve`` runs waitress bound to port 0; the port is read
back from the service's own "listening on" log line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
WMILL_CLI = REPO_ROOT / "node_modules" / "windmill-cli" / "esm" / "main.js"
_LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")


class RecordingClient:
    """HTTP calls to a running service that keep every body seen, for leak scans."""

    url: str
    responses: list[str]

    def post(
        self, path: str, body: Any = None, *, timeout: float = 300, **kwargs: Any
    ) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        response = requests.post(self.url + path, timeout=timeout, **kwargs)
        self.responses.append(response.text)
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        response = requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)
        self.responses.append(response.text)
        return response


class ServiceProcess(RecordingClient):
    def __init__(
        self,
        *,
        data_dir: Path,
        log_path: Path,
        env: Mapping[str, str],
        prefix: Sequence[str] = (),
        stderr_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        # Where stderr goes when it must be told apart from the log (stdout): a
        # traceback printed outside the logging setup, say. None: into the log.
        self.stderr_path = stderr_path
        self.prefix = list(prefix)  # e.g. `unshare --pid --fork`: the service runs as PID 1
        self.log_path = log_path
        self.extra_env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.responses: list[str] = []  # every body seen, for leak scans

    def start(self, timeout: float = 30) -> ServiceProcess:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.data_dir.parent / "service-home"),
            "HOST": "127.0.0.1",
            "PORT": "0",
            "DATA_DIR": str(self.data_dir),
            "WMILL_CLI": str(WMILL_CLI),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "DEBUG",
            **self.extra_env,
        }
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).parent / "windmill-git-sync"
        self._log = open(self.log_path, "ab")
        stderr = open(self.stderr_path, "ab") if self.stderr_path is not None else None
        self.proc = subprocess.Popen(
            [*self.prefix, str(exe), "serve"],
            env=env,
            stdout=self._log,
            stderr=stderr if stderr is not None else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if stderr is not None:
            stderr.close()  # the child has its own copy
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            match = _LISTENING.search(self.log_text())
            if match:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                if self._healthy():
                    return self
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"service exited early:\n{self.log_text()[-4000:]}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"service did not start:\n{self.log_text()[-4000:]}")

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stderr_text(self) -> str:
        path = self.stderr_path
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
