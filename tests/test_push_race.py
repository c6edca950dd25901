"""Two replicas racing for one branch: every change lands, history stays linear, no debris.

A lost push race is the normal path with two replicas. The loser must go
back to the base it built on and find the winner's commit holds the same
content: no pending ref, no fetch of the whole history, nothing left behind
in either service's repository.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
from pathlib import Path

from tests.conftest import Target, made
from tests.servers.git_server import GitHttpServer, git_env
from tests.servers.service_process import ServiceProcess
from tests.test_faults import start_service

ROUNDS = 6


def _git(git_dir: Path, *args: str) -> str:
    """The real git, as the verifier; an empty HOME so no user configuration applies."""
    home = git_dir.parent / "verifier-home"
    home.mkdir(exist_ok=True)
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args],
        env=git_env(home),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def _service_repos(replica: ServiceProcess) -> list[Path]:
    return [p for p in replica.data_dir.rglob("repo.git") if (p / "HEAD").is_file()]


def test_lost_push_races_leave_no_pending_refs(
    target: Target, windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    replicas = [start_service(tmp_path / f"replica{i}", windmill, ca_pem) for i in (1, 2)]
    # Both replicas read the branch's tip for their push at the same moment, so
    # every round one of them loses the race (a real one: the Git server's
    # compare-and-swap refuses it).
    line_up = threading.Barrier(2, timeout=20)

    def push_together(method: str, path: str, service: str | None) -> None:
        if method == "GET" and service == "git-receive-pack" and f"/{target.repo}" in path:
            try:
                line_up.wait()
            except threading.BrokenBarrierError:
                pass  # one replica found nothing to push: nothing to line up with

    git_server.before_backend = push_together
    try:
        answers = []
        for round_ in range(ROUNDS):
            line_up.reset()
            target.workspace.add_script(
                f"f/team/race_{round_}", language="bash", content=f"echo {round_}\n"
            )
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                responses = list(pool.map(lambda s: s.post("/sync", target.body()), replicas))
            assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
            answers.append([r.json() for r in responses])
            # Both answer the remote's tip: the winner's commit.
            assert len({a["commit"] for a in answers[-1]}) == 1, answers[-1]
    finally:
        git_server.before_backend = None
        logs = [replica.log_text() for replica in replicas]
        for replica in replicas:
            replica.stop()

    remote = git_server.repo_path(target.repo)
    tree = target.tree()
    for round_ in range(ROUNDS):
        assert tree[f"f/team/race_{round_}.sh"] == f"echo {round_}\n".encode()
    # Each round's change was committed once, by the replica that won.
    assert [sum(a["changed"] for a in pair) for pair in answers] == [1] * ROUNDS
    pushed = [c for pair in reversed(answers) for a in pair if a["changed"] for c in made(a)]
    # Linear: no merge anywhere, the first-parent line is the whole history,
    # and it is exactly the winners' commits.
    assert _git(remote, "rev-list", "--merges", "main") == ""
    first_parent = _git(remote, "log", "--first-parent", "--format=%H", "main").split()
    assert first_parent == _git(remote, "rev-list", "main").split()
    assert first_parent == pushed
    git_server.fsck(target.repo)
    # The races really happened, and left nothing behind.
    assert sum(log.count("rejected: the remote moved on") for log in logs) >= ROUNDS - 1
    for replica, log in zip(replicas, logs, strict=True):
        repos = _service_repos(replica)
        assert repos, f"no repository under {replica.data_dir}"
        for repo in repos:
            assert _git(repo, "for-each-ref", "refs/wmsync/") == "", repo
        assert "diverged" not in log
        assert "fetching the history" not in log
