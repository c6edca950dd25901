"""/history and the shallow copy: the truth about what it holds, and the way back to the first commit.

A sync fetches only the branch's tip, so the service's copy of a repository
that already had a history starts at that tip. GET /history says so
(``complete: false``); POST /history, with the Git token, fetches the rest
(commits and trees) and lists every commit, as ``git log -- <item>`` on the
server does.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLI, GIT_TOKEN, WINDMILL_TOKEN, Target, cli_env, made
from tests.servers.git_server import git_env
from tests.servers.proc_scan import needles_for, scan_tree
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

WRONG_GIT_TOKEN = "ghp_history_wrong_5151515151"
FLOW = "f/team/my_flow"
FLOW_FILE = "f/team/my_flow.flow/flow.yaml"


def server_log(target: Target, tmp_path: Path, path: str) -> list[tuple[str, str]]:
    """(commit, subject) of the commits touching ``path``, as real git on the server lists them."""
    home = tmp_path / "git-home"
    home.mkdir(exist_ok=True)
    out = subprocess.run(
        [
            "git",
            "--git-dir",
            str(target.git_server.repo_path(target.repo)),
            "log",
            "--no-renames",
            "--format=%H%x09%s",
            "refs/heads/main",
            "--",
            path,
        ],
        env=git_env(home),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [tuple(line.split("\t", 1)) for line in out.splitlines()]  # type: ignore[misc]


def listed(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["commit"], c["subject"]) for c in data["commits"]]


def query(target: Target) -> dict[str, str]:
    return {"workspace": target.workspace_id, "git_remote_url": target.remote_url, "path": FLOW}


def history_body(target: Target, **overrides: Any) -> dict[str, Any]:
    return {**query(target), "git_token": GIT_TOKEN, **overrides}


def commit_history_before_the_service(target: Target) -> list[str]:
    """Five human commits, three of them touching the flow; the tip does not."""
    server = target.git_server
    made = [
        server.clone_and_commit(
            target.repo, {FLOW_FILE: b"summary: one\n", "docs/a.md": b"a\n"}, "Add the flow"
        ),
        server.clone_and_commit(target.repo, {"docs/a.md": b"a2\n"}, "Docs only"),
        server.clone_and_commit(target.repo, {FLOW_FILE: b"summary: two\n"}, "Flow: two"),
        server.clone_and_commit(
            target.repo, {FLOW_FILE: b"summary: three\n", "docs/b.md": b"b\n"}, "Flow: three"
        ),
        server.clone_and_commit(target.repo, {"docs/c.md": b"c\n"}, "Docs again"),
    ]
    return made


def test_get_tells_the_truth_and_post_reaches_back_to_the_first_commit(
    service: ServiceProcess, target: Target, git_server, tmp_path: Path
) -> None:
    human = commit_history_before_the_service(target)
    synced = service.post("/sync", target.body())
    assert synced.status_code == 200, synced.text
    ours = made(synced.json())
    assert git_server.parents(target.repo, ours[-1]) == [human[-1]]
    full = server_log(target, tmp_path, "f/team/my_flow.flow")
    by_service = [(c, s) for c, s in full if c in ours]
    assert by_service and full == [*by_service, *((c, s) for c, s in full if c in human)]
    assert [c for c, _ in full if c in human] == [human[3], human[2], human[0]]

    # Only what the copy holds: our commits. The tip they built on is the
    # edge of the copy; its tree holds the flow, yet it did not change it.
    shallow = service.get("/history", params=query(target))
    assert shallow.status_code == 200, shallow.text
    data = shallow.json()
    assert listed(data) == by_service
    assert data["complete"] is False
    assert "POST /history" in data["hint"]

    git_server.clear_requests()
    deepened = service.post("/history", history_body(target))
    assert deepened.status_code == 200, deepened.text
    data = deepened.json()
    assert listed(data) == full
    assert data["complete"] is True and "hint" not in data
    assert data["commits"][-1]["files"] == [
        FLOW_FILE
    ]  # the root: only the flow's file, not docs/a.md
    assert git_server.requests, "POST /history asks the Git host"

    # The deepened copy is kept: a later GET is complete, without the host.
    git_server.clear_requests()
    later = service.get("/history", params=query(target))
    assert later.json()["commits"] == data["commits"] and later.json()["complete"] is True
    assert git_server.requests == []

    # A sync after the deepen builds on our commit and pushes, as ever.
    target.workspace.update("flow", FLOW, summary="Version four", edited_by="bob")
    again = service.post("/sync", target.body())
    assert again.status_code == 200, again.text
    assert target.log()[: len(ours) + 1] == [again.json()["commit"], *ours]
    git_server.fsck(target.repo)
    final = service.get("/history", params=query(target)).json()
    assert listed(final) == server_log(target, tmp_path, "f/team/my_flow.flow")
    assert final["complete"] is True


def test_a_wrong_token_is_refused_and_never_leaks(
    service: ServiceProcess, target: Target, git_server, tmp_path: Path
) -> None:
    commit_history_before_the_service(target)
    assert service.post("/sync", target.body()).status_code == 200
    before = service.get("/history", params=query(target)).json()

    refused = service.post("/history", history_body(target, git_token=WRONG_GIT_TOKEN))

    assert refused.status_code == 500, refused.text
    assert refused.json()["error"] == "git_auth_failed"
    after = service.get("/history", params=query(target)).json()
    assert after == before and after["complete"] is False
    needles = needles_for(WRONG_GIT_TOKEN) + needles_for(GIT_TOKEN)
    assert not [n for n in needles if n in refused.text.encode()]
    assert not [n for n in needles if n in service.log_text().encode()]
    assert scan_tree(service.data_dir, needles) == []
    # The copy is still one a sync can use.
    target.workspace.add_script("f/team/after_refusal", language="bash", content="echo 1\n")
    assert service.post("/sync", target.body()).status_code == 200
    git_server.fsck(target.repo)


@pytest.mark.parametrize("human_root", [False, True], ids=["service-root", "human-root"])
def test_a_root_commit_is_a_root_even_at_the_edge_of_the_copy(
    service: ServiceProcess, target: Target, tmp_path: Path, human_root: bool
) -> None:
    if human_root:  # the tip the first sync fetches, as the only commit
        target.git_server.clone_and_commit(target.repo, {FLOW_FILE: b"summary: x\n"}, "Only one")
    assert service.post("/sync", target.body()).status_code == 200

    data = service.get("/history", params=query(target)).json()

    # The branch's first commit added every file in it: nothing is unknown.
    assert data["complete"] is True
    assert listed(data) == server_log(target, tmp_path, "f/team/my_flow.flow")
    assert len(data["commits"]) == (2 if human_root else 1)


def test_post_history_of_an_unknown_target_is_404_without_asking_the_host(
    service: ServiceProcess, target: Target, git_server
) -> None:
    git_server.clear_requests()

    response = service.post("/history", history_body(target))

    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"
    assert git_server.requests == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"git_token": None}, "git_token"),
        ({"path": None}, "path"),
        ({"path": "f/../etc"}, "path"),
        ({"git_branch": "-x"}, "git_branch"),
        ({"git_remote_url": f"https://u:{GIT_TOKEN}@example.com/r.git"}, "git_remote_url"),
        ({"git_token": f"{GIT_TOKEN} spaces"}, "git_token"),
        ({"git_username": "a b"}, "git_username"),
        ({"workspace": "*"}, "workspace"),
        ({"path_prefix": "../up"}, "path_prefix"),
        ({"windmill_token": WINDMILL_TOKEN}, "windmill_token"),
        ({"limit": 3}, "limit"),
    ],
)
def test_a_bad_history_body_is_400_naming_the_field(
    service: ServiceProcess, target: Target, change: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**history_body(target), **change}.items() if v is not None}

    response = service.post("/history", body)

    assert response.status_code == 400, response.text
    assert field in response.json()["message"]
    assert GIT_TOKEN not in response.text and WINDMILL_TOKEN not in response.text


def test_a_token_in_the_query_string_is_refused(service: ServiceProcess, target: Target) -> None:
    response = service.get("/history", params={**query(target), "git_token": GIT_TOKEN})

    assert response.status_code == 400
    assert "JSON body" in response.json()["message"]
    assert GIT_TOKEN not in response.text


def test_the_history_command_deepens_with_a_token_from_stdin(
    target: Target, windmill: WindmillEmulator, ca_pem: Path, tmp_path: Path
) -> None:
    commit_history_before_the_service(target)
    env = cli_env(tmp_path, windmill, ca_pem)
    where = ["--workspace", target.workspace_id, "--git-remote-url", target.remote_url]

    def run(command: list[str], secrets: dict[str, str] | None = None) -> dict[str, Any]:
        done = subprocess.run(
            [str(CLI), *command, *where, *(["--secrets-from-stdin"] if secrets else [])],
            input=json.dumps(secrets) if secrets else None,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert GIT_TOKEN not in done.stdout + done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    run(["sync"], {"windmill_token": WINDMILL_TOKEN, "git_token": GIT_TOKEN})
    full = server_log(target, tmp_path, "f/team/my_flow.flow")

    shallow = run(["history", "--path", FLOW])
    assert shallow["complete"] is False and listed(shallow) == full[:-3]
    deepened = run(["history", "--path", FLOW], {"git_token": GIT_TOKEN})
    assert deepened["complete"] is True and listed(deepened) == full
    assert run(["history", "--path", FLOW])["complete"] is True
    assert scan_tree(tmp_path / "data", needles_for(GIT_TOKEN)) == []
