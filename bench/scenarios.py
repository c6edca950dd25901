"""What is measured, for one workspace size, and the throughput run.

For a size N: a synthetic workspace of N items (the emulator's realistic mix),
a backup repository with a history of a few hundred commits, then, side by
side in one run:

- the bare CLI: `wmill sync pull` into an empty directory, and with nothing
  changed (and with one and ten items changed, for context);
- the naive approach a user would script: fresh clone, pull, `git add -A`,
  commit, push, every time;
- the service through POST /sync: first sync, no change, one item changed,
  ten items changed.

Rounds alternate the bare CLI, the service and the naive script so a drift in
the machine's speed hits all of them alike.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.secrets import Redactor, Secret
from gitsync.secretscan.scan import SecretScanner
from gitsync.windmill.mirror import scan_export
from gitsync.windmill.wmill import Scope, WmillCli
from tests.servers.service_process import WMILL_CLI
from tests.servers.windmill_emulator import ExportOptions

from .harness import WINDMILL_TOKEN, Run, Servers, run_command
from .history import build_history

Log = Callable[[str], None]


@dataclass
class SizeResult:
    size: int
    files: int = 0
    lock_entries: int = 0
    history_commits: int = 0
    runs: dict[str, list[Run]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The service's first-sync export compared with the bare CLI's first pull.
    identical: bool | None = None
    # The secret scan alone (seconds): every file (a first sync), one script.
    scan_all: float | None = None
    scan_one: float | None = None

    def add(self, name: str, run: Run) -> None:
        self.runs.setdefault(name, []).append(run)

    def median(self, name: str, what: str = "wall") -> float | None:
        runs = self.runs.get(name)
        if not runs:
            return None
        return float(statistics.median(float(getattr(r, what)) for r in runs))

    def peak(self, name: str, what: str) -> int | None:
        runs = self.runs.get(name)
        if not runs:
            return None
        return max(int(getattr(r, what)) for r in runs)


@dataclass
class ThroughputResult:
    workspaces: int
    items: int
    sequential: Run
    concurrent: Run


def export_with_the_service_code(servers: Servers, workspace: str, dest: Path) -> None:
    """The workspace as the service pulls it (what the CLI writes), to seed a history."""
    settings = Settings(
        windmill_base_url=servers.emulator.base_url, wmill_cli=WMILL_CLI, data_dir=dest.parent
    )
    token = Secret(WINDMILL_TOKEN)
    WmillCli(settings).pull(
        workspace=workspace,
        token=token,
        export_dir=dest,
        scope=Scope(),
        deadline=Deadline(3600),
        redactor=Redactor([token], []),
    )


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _changeable(servers: Servers, workspace: str) -> tuple[list[str], list[tuple[str, str]]]:
    ws = servers.emulator.workspace(workspace)
    scripts = [p for p in ws.paths("script") if not ws.get("script", p).meta.archived]
    others = [(kind, p) for kind in ("flow", "resource", "variable") for p in ws.paths(kind)]
    return scripts, others


class Changer:
    """Edits items of a workspace the way people do: a new script version, a new summary."""

    def __init__(self, servers: Servers, workspace: str) -> None:
        self.emulator = servers.emulator
        self.workspace = workspace
        self.ws = servers.emulator.workspace(workspace)
        self.scripts, self.others = _changeable(servers, workspace)
        self.count = 0

    def _warm(self) -> None:
        # The emulator builds an archive once per workspace revision: build it
        # now, so that whichever client pulls first does not pay for it alone.
        for record in reversed(self.emulator.requests):
            if record.endpoint == "tarball" and record.workspace == self.workspace:
                self.ws.archive(ExportOptions.from_query(record.query))
                return

    def change(self, n: int) -> None:
        for _ in range(n):
            self.count += 1
            if self.count % 4 == 0 and self.others:
                kind, path = self.others[self.count % len(self.others)]
                field_name = "summary" if kind == "flow" else "description"
                self.ws.update(kind, path, **{field_name: f"edited {self.count}"})
            else:
                path = self.scripts[self.count % len(self.scripts)]
                content = self.ws.get("script", path).data["content"]
                self.ws.update("script", path, content=content + f"\n# edit {self.count}\n")
        self._warm()


def naive_backup(servers: Servers, remote: str, workdir: Path, workspace: str, log: Path) -> Run:
    """What a cron script does: fresh clone, wmill pull, git add -A, commit, push."""
    root = Path(tempfile.mkdtemp(prefix="naive-", dir=workdir))
    work = root / "work"
    git_env = servers.git_env(root / "home")
    steps = [
        (["git", "clone", "--quiet", remote, str(work)], root, git_env),
        (
            ["node", str(WMILL_CLI), "sync", "pull", "--yes", "--skip-branch-validation"],
            work,
            servers.cli_env(workspace, work),
        ),
        (["git", "add", "-A"], work, git_env),
        (
            ["sh", "-c", "git diff --cached --quiet || git commit -q -m 'Windmill backup'"],
            work,
            git_env,
        ),
        (["git", "push", "--quiet", "origin", "HEAD:main"], work, git_env),
    ]
    total = Run(0.0, 0.0)
    for argv, cwd, env in steps:
        step = run_command(argv, cwd=cwd, env=env, log=log)
        total.wall += step.wall
        total.cpu += step.cpu
        total.peak_kb = max(total.peak_kb, step.peak_kb)
    shutil.rmtree(root, ignore_errors=True)
    return total


def run_size(
    servers: Servers,
    size: int,
    workdir: Path,
    *,
    rounds: int,
    history: int,
    cli_fresh_max: int,
    naive_max: int,
    log: Log,
) -> SizeResult:
    result = SizeResult(size, history_commits=history)
    workspace = f"bench-{size}"
    servers.emulator.workspace(workspace).seed_synthetic(size, seed=size)
    base = workdir / f"size-{size}"
    base.mkdir()
    cli_log = base / "commands.log"

    # The history: the workspace as the CLI writes it, backed up hourly for weeks.
    log(f"[{size}] building a backup history of {history} commits")
    export = base / "history-export" / "export"
    export_with_the_service_code(servers, workspace, export)
    result.files = sum(1 for p in export.rglob("*") if p.is_file())
    lock = (export / "wmill-lock.yaml").read_text()
    result.lock_entries = sum(1 for line in lock.splitlines() if line.startswith("  "))
    result.scan_all, result.scan_one = time_secret_scan(export)
    history_repo = base / "history.git"
    build_history(history_repo, export, history)
    service_remote = servers.create_repo(f"svc-{size}", copy_of=history_repo)
    naive_remote = servers.create_repo(f"naive-{size}", copy_of=history_repo)

    # The bare CLI, first pull into an empty directory.
    cli_dir = base / "cli" / "export"
    cli_dir.mkdir(parents=True)
    (cli_dir / "wmill.yaml").write_text(Scope().wmill_yaml())
    if size <= cli_fresh_max:
        log(f"[{size}] bare CLI: first pull")
        result.add("cli_fresh", servers.cli_pull(workspace, cli_dir, cli_log))
    else:
        result.notes.append(
            f"The bare CLI's first pull was not run at {size} items (quadratic: it would take "
            f"far longer than the rest of the benchmark; --cli-fresh-max {size} runs it)."
        )
        shutil.rmtree(cli_dir)
        shutil.copytree(export, cli_dir)

    # The service's first sync, onto the remote that already has the history.
    log(f"[{size}] service: first sync")
    result.add("svc_first", servers.sync(workspace, service_remote))
    if size <= cli_fresh_max:
        # The fast first pull must write what the CLI's own first pull wrote.
        result.identical = _files(servers.export_dir(workspace, service_remote)) == _files(cli_dir)

    changer = Changer(servers, workspace)
    narrowed_before = _narrowed_pulls(servers)
    for number in range(1, rounds + 1):
        log(f"[{size}] round {number} of {rounds}")
        result.add("cli_nochange", servers.cli_pull(workspace, cli_dir, cli_log))
        result.add("svc_nochange", servers.sync(workspace, service_remote))
        changer.change(1)
        result.add("svc_one", servers.sync(workspace, service_remote))
        result.add("cli_one", servers.cli_pull(workspace, cli_dir, cli_log))
        changer.change(10)
        result.add("svc_ten", servers.sync(workspace, service_remote))
        result.add("cli_ten", servers.cli_pull(workspace, cli_dir, cli_log))
        if size <= naive_max:
            result.add("naive", naive_backup(servers, naive_remote, base, workspace, cli_log))
    shutil.rmtree(base / "cli", ignore_errors=True)
    result.notes.append(
        f"At {size} items, {_narrowed_pulls(servers) - narrowed_before} of the service's "
        f"{2 * rounds} syncs with changes pulled only the changed items (the service's log)."
    )
    return result


def _narrowed_pulls(servers: Servers) -> int:
    try:
        text = (servers.workdir / "service.log").read_text(errors="replace")
    except OSError:
        return 0
    return text.count("narrowed pull: ")


def time_secret_scan(export: Path, repeats: int = 3) -> tuple[float, float]:
    """The scan of a first sync (every file) and of a one-item change (one script)."""
    scanner = SecretScanner()
    files = scan_export(export)
    one = next(rel for rel in sorted(files) if rel.endswith((".py", ".ts")))

    def timed(subset: dict[str, str]) -> float:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            scanner.scan(subset)
            runs.append(time.perf_counter() - started)
        return float(statistics.median(runs))

    return timed(files), timed({one: files[one]})


def run_throughput(
    servers: Servers, workdir: Path, *, workspaces: int, items: int, log: Log
) -> ThroughputResult:
    """Ten workspaces' first syncs at once, against the same ten one after another."""
    names = [f"tp-{items}-{i}" for i in range(workspaces)]
    for i, name in enumerate(names):
        servers.emulator.workspace(name).seed_synthetic(items, seed=1000 + i)
    log(f"[throughput] {workspaces} workspaces of {items} items, one after another")
    seq_remotes = [servers.create_repo(f"{name}-seq") for name in names]
    assert servers.meter is not None
    with servers.meter.measure() as sequential:
        for name, remote in zip(names, seq_remotes, strict=True):
            servers.sync(name, remote, measure=False)
    log(f"[throughput] the same {workspaces}, all at once")
    par_remotes = [servers.create_repo(f"{name}-par") for name in names]
    time.sleep(1)
    with servers.meter.measure() as concurrent, ThreadPoolExecutor(workspaces) as pool:
        list(pool.map(lambda n, r: servers.sync(n, r, measure=False), names, par_remotes))
    return ThroughputResult(workspaces, items, sequential, concurrent)
