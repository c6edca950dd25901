"""The servers a benchmark runs against, and how a run is measured.

Everything is on loopback: the Windmill emulator of the tests (in this
process, so workspaces can be seeded and edited directly), the HTTPS Git
server of the tests (its own process, so its CGI children never count as
the client's work) and the real service, started as `make run` starts it.

Each measured run gives its wall time, its CPU time (user + system, children
included) and its peak memory. The machine these run on is shared, so CPU
time, which other load hardly changes, is reported next to wall time.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.servers.git_server import init_bare_repo
from tests.servers.service_process import WMILL_CLI, ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

WINDMILL_TOKEN = "wm_bench_tok_5e4d3c2b1a09f8e7d6c5"
GIT_TOKEN = "ghp_benchtoken_0123456789abcdefABCDEF"
GIT_USERNAME = "x-access-token"
_CLK = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Run:
    """One measured run."""

    wall: float
    cpu: float
    peak_kb: int = 0  # the largest single process (a command and its children)
    service_kb: int = 0  # the service's own processes (service runs only)
    children_kb: int = 0  # the service's children at once (service runs only)
    extra: dict[str, Any] = field(default_factory=dict)


# -- /proc ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    rss_kb: int


def _read_stat(pid: int) -> ProcInfo | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    ticks = sum(int(x) for x in rest[11:15])
    return ProcInfo(pid, int(rest[1]), ticks, int(rest[21]) * _PAGE_KB)


def process_tree(root: int) -> dict[int, ProcInfo]:
    """``root`` and all its live descendants."""
    table: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _read_stat(int(name))
            if info is not None:
                table[info.pid] = info
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    tree: dict[int, ProcInfo] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in tree:
            tree[pid] = table[pid]
            todo.extend(children.get(pid, []))
    return tree


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class ServiceMeter:
    """CPU and memory of the service: its own processes and the git/node children they start.

    The service's own process is the one running waitress (any process of the
    same executable counts); everything else under it is a child (node, running
    the wmill CLI; Git runs in-process). Their peak RSS comes from the kernel's
    high-water mark, reset at the start of each run; children live briefly, so
    they are sampled.
    """

    def __init__(self, root_pid: int, interval: float = 0.03) -> None:
        self.root = root_pid
        self.exe = _exe(root_pid)
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._children_kb = 0
        self._service_kb = 0
        self._thread = threading.Thread(target=self._sample, name="service-meter", daemon=True)
        self._thread.start()

    def _own(self, tree: Mapping[int, ProcInfo]) -> list[int]:
        return [pid for pid in tree if pid == self.root or _exe(pid) == self.exe]

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            tree = process_tree(self.root)
            own = set(self._own(tree))
            children = sum(info.rss_kb for pid, info in tree.items() if pid not in own)
            service = max((tree[pid].rss_kb for pid in own), default=0)
            with self._lock:
                self._children_kb = max(self._children_kb, children)
                self._service_kb = max(self._service_kb, service)

    def cpu_seconds(self) -> float:
        return sum(info.cpu_ticks for info in process_tree(self.root).values()) / _CLK

    @contextmanager
    def measure(self) -> Iterator[Run]:
        """Measures the block: CPU of the whole tree, peak RSS of the service and of children."""
        own = self._own(process_tree(self.root))
        for pid in own:  # resets VmHWM (the peak RSS) of our own processes
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                pass
        with self._lock:
            self._children_kb = 0
            self._service_kb = 0
        run = Run(0.0, 0.0)
        cpu0, t0 = self.cpu_seconds(), time.perf_counter()
        yield run
        run.wall = time.perf_counter() - t0
        run.cpu = self.cpu_seconds() - cpu0
        time.sleep(self.interval)  # one more sample
        with self._lock:
            sampled = self._service_kb
            run.children_kb = self._children_kb
        hwm = max((_hwm_kb(pid) for pid in self._own(process_tree(self.root))), default=0)
        run.service_kb = max(hwm, sampled)
        run.peak_kb = max(run.service_kb, run.children_kb)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def run_command(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: Path, timeout: float = 7200
) -> Run:
    """Run a command to completion; its wall time, CPU time and largest process."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.killpg(proc.pid, 9)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                raise TimeoutError(f"{argv[0]} took longer than {timeout:.0f} s")
            time.sleep(0.005)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}; see {log}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)


# -- the servers -----------------------------------------------------------------


class Servers:
    """Emulator, Git server and service, on loopback, for one benchmark."""

    def __init__(self, workdir: Path, service_env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.emulator = WindmillEmulator()
        self.git_root = workdir / "git"
        self._git_proc: subprocess.Popen[str] | None = None
        self.git_url = ""
        self.ca_pem = Path()
        self.service: ServiceProcess | None = None
        self.meter: ServiceMeter | None = None
        self._service_env = dict(service_env or {})

    def __enter__(self) -> Servers:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.emulator.start()
        self.emulator.add_token(WINDMILL_TOKEN)
        token_file = self.workdir / "git-token"
        token_file.write_text(GIT_TOKEN)
        self._git_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.servers.git_server",
                "--root",
                str(self.git_root),
                "--token-file",
                str(token_file),
                "--cert-dir",
                str(self.workdir / "certs"),
            ],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "git-server.log", "ab"),
            text=True,
            start_new_session=True,
        )
        assert self._git_proc.stdout is not None
        for line in self._git_proc.stdout:
            if line.startswith("CA "):
                self.ca_pem = Path(line[3:].strip())
            elif line.startswith("READY "):
                self.git_url = line[6:].strip()
                break
        if not self.git_url:
            raise RuntimeError("the Git server did not start; see git-server.log")
        self.service = ServiceProcess(
            data_dir=self.workdir / "service-data",
            log_path=self.workdir / "service.log",
            env={
                "WINDMILL_BASE_URL": self.emulator.base_url,
                "GIT_SSL_CAINFO": str(self.ca_pem),
                "LOG_LEVEL": "INFO",
                "SYNC_TIMEOUT": "3600",
                "COMMAND_TIMEOUT": "3600",
                **self._service_env,
            },
        )
        self.service.start(timeout=60)
        assert self.service.proc is not None
        self.meter = ServiceMeter(self.service.proc.pid)

    def stop(self) -> None:
        if self.meter is not None:
            self.meter.close()
        if self.service is not None and self.service.proc is not None:
            self.service.stop()
        if self._git_proc is not None and self._git_proc.poll() is None:
            self._git_proc.terminate()
            try:
                self._git_proc.wait(15)
            except subprocess.TimeoutExpired:
                self._git_proc.kill()
                self._git_proc.wait(5)
        self.emulator.stop()

    # -- repositories ------------------------------------------------------------

    def repo_path(self, name: str) -> Path:
        return self.git_root / f"{name}.git"

    def repo_url(self, name: str) -> str:
        return f"{self.git_url}/{name}.git"

    def create_repo(self, name: str, *, copy_of: Path | None = None) -> str:
        path = self.repo_path(name)
        if path.exists():
            shutil.rmtree(path)
        if copy_of is not None:
            shutil.copytree(copy_of, path, symlinks=True)
        else:
            init_bare_repo(path)
        return self.repo_url(name)

    # -- the service ---------------------------------------------------------------

    def sync(
        self, workspace: str, remote_url: str, *, measure: bool = True, timeout: float = 3600
    ) -> Run:
        """POST /sync and wait; measured on the service's side of the machine.

        ``measure=False`` for syncs inside a larger measured block (and for
        syncs running at once: the meter measures one block at a time).
        """
        assert self.service is not None and self.meter is not None
        body = {
            "windmill_token": WINDMILL_TOKEN,
            "git_remote_url": remote_url,
            "git_token": GIT_TOKEN,
            "workspace": workspace,
        }
        if measure:
            with self.meter.measure() as run:
                response = requests.post(self.service.url + "/sync", json=body, timeout=timeout)
        else:
            start = time.perf_counter()
            response = requests.post(self.service.url + "/sync", json=body, timeout=timeout)
            run = Run(time.perf_counter() - start, 0.0)
        if response.status_code != 200:
            raise RuntimeError(
                f"sync of {workspace} failed: {response.status_code} {response.text}"
            )
        data = response.json()
        run.extra = {k: data.get(k) for k in ("changed", "added", "modified", "deleted")}
        return run

    def export_dir(self, workspace: str, remote_url: str) -> Path:
        """The directory the service pulls ``workspace`` into for ``remote_url``."""
        assert self.service is not None
        for description in (self.service.data_dir / "targets").glob("*/target.json"):
            target = json.loads(description.read_text())
            if target["workspace"] == workspace and remote_url.endswith(target["remote"]):
                return description.parent / "export"
        raise LookupError(f"no target of the service for {workspace} and {remote_url}")

    # -- the bare CLI and git, as a user runs them ------------------------------------

    def cli_env(self, workspace: str, directory: Path) -> dict[str, str]:
        home = Path(tempfile.mkdtemp(prefix="cli-home-", dir=self.workdir))
        (home / "config").mkdir()
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "WMILL_CONFIG_DIR": str(home / "config"),
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            "GIT_CEILING_DIRECTORIES": str(directory.parent),
            "WM_TOKEN": WINDMILL_TOKEN,
            "WM_WORKSPACE": workspace,
            "BASE_INTERNAL_URL": self.emulator.base_url,
        }

    def cli_pull(self, workspace: str, directory: Path, log: Path) -> Run:
        """`wmill sync pull` of the pinned CLI, nothing else."""
        return run_command(
            ["node", str(WMILL_CLI), "sync", "pull", "--yes", "--skip-branch-validation"],
            cwd=directory,
            env=self.cli_env(workspace, directory),
            log=log,
        )

    def git_env(self, home: Path) -> dict[str, str]:
        basic = base64.b64encode(f"{GIT_USERNAME}:{GIT_TOKEN}".encode()).decode()
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_SSL_CAINFO": str(self.ca_pem),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_COUNT": "3",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
            "GIT_CONFIG_KEY_1": "user.name",
            "GIT_CONFIG_VALUE_1": "Backup Cron",
            "GIT_CONFIG_KEY_2": "user.email",
            "GIT_CONFIG_VALUE_2": "cron@example.com",
        }
