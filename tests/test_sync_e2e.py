"""POST /sync end to end: the real service, the real wmill CLI, a real Git server."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from pathlib import Path

from gitsync.windmill.wmill import Scope
from tests.conftest import (
    CLI,
    GIT_TOKEN,
    WINDMILL_TOKEN,
    Target,
    cli_env,
    files_under,
    made,
    new_target,
    plain_pull,
)
from tests.servers.service_process import ServiceProcess


def test_health(service: ServiceProcess) -> None:
    response = service.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}


def test_first_sync_backs_up_exactly_what_wmill_pull_writes(
    service: ServiceProcess, target: Target, windmill, tmp_path: Path
) -> None:
    response = service.post("/sync", target.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["success"] is True
    assert data["message"] == f"Successfully synced workspace '{target.workspace_id}' to Git"
    assert data["changed"] is True
    assert data["commit"] == target.log()[0]
    assert target.log() == made(data)
    assert data["added"] > 10 and data["modified"] == 0 and data["deleted"] == 0

    expected_dir = tmp_path / "plain"
    plain_pull(windmill, target.workspace_id, expected_dir, Scope().wmill_yaml())
    tree = target.tree()
    readme = tree.pop("README.md")
    assert tree == files_under(expected_dir)
    assert f"# Windmill workspace `{target.workspace_id}`".encode() in readme
    # The whole workspace by default: f/ and u/ items, resource types, schedules...
    paths = set(target.tree())
    assert any(p.startswith("u/") for p in paths)
    assert any(p.endswith(".resource-type.yaml") for p in paths)
    assert any(p.endswith(".schedule.yaml") for p in paths)
    assert any("/flow.yaml" in p for p in paths)
    assert not any("secret" in p for p in paths if p.endswith(".variable.yaml"))


def test_second_sync_records_edit_addition_and_deletion(
    service: ServiceProcess, target: Target, git_server
) -> None:
    first = service.post("/sync", target.body()).json()
    script = next(p for p in target.tree() if p.startswith("f/") and p.endswith(".py"))
    script_path = script.removesuffix(".py")
    target.workspace.update("script", script_path, content="def main():\n    return 42\n")
    target.workspace.add_script(
        "f/team/brand_new", language="bun", content="export async function main() { return 1 }\n"
    )
    resource = next(p for p in target.tree() if p.endswith(".resource.yaml"))
    target.workspace.remove("resource", resource.removesuffix(".resource.yaml"))

    response = service.post("/sync", target.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["changed"] is True
    assert data["modified"] >= 1 and data["added"] >= 2 and data["deleted"] == 1
    files = {f["path"]: f["status"] for f in data["files"]}
    assert files[script] == "modified"
    assert files["f/team/brand_new.ts"] == "added"
    assert files[resource] == "deleted"
    log = target.log()
    assert log == made(data) + made(first)
    assert git_server.parent_of(target.repo, made(data)[-1]) == first["commit"]
    tree = target.tree()
    assert tree[script] == b"def main():\n    return 42\n"
    assert resource not in tree


def test_sync_without_changes_makes_no_commit(
    service: ServiceProcess, target: Target, git_server
) -> None:
    first = service.post("/sync", target.body()).json()
    git_server.clear_requests()

    response = service.post("/sync", target.body())

    assert response.status_code == 200
    data = response.json()
    assert data["changed"] is False
    assert data["commit"] == first["commit"]
    assert (data["added"], data["modified"], data["deleted"]) == (0, 0, 0)
    assert target.log() == made(first)
    assert git_server.receive_pack_posts(target.repo) == []


def test_new_branch_on_existing_repository(service: ServiceProcess, target: Target) -> None:
    service.post("/sync", target.body())
    response = service.post("/sync", target.body(git_branch="backups/nightly"))
    assert response.status_code == 200, response.text
    assert response.json()["changed"] is True
    assert target.tree("backups/nightly") == target.tree("main")
    assert target.log("backups/nightly") == made(response.json())


def test_bad_windmill_token_fails_and_pushes_nothing(
    service: ServiceProcess, target: Target, git_server
) -> None:
    git_server.clear_requests()
    response = service.post("/sync", target.body(windmill_token="wm_wrong_token_123456"))
    assert response.status_code == 500
    data = response.json()
    assert data["success"] is False
    assert data["message"] == f"Windmill rejected the token for workspace '{target.workspace_id}'"
    assert git_server.receive_pack_posts(target.repo) == []
    assert target.log() == []


def test_bad_git_token_fails_with_clear_message(service: ServiceProcess, target: Target) -> None:
    response = service.post("/sync", target.body(git_token="ghp_wrong_0000000000000000"))
    assert response.status_code == 500
    data = response.json()
    assert data["success"] is False
    assert "authentication error" in data["message"]
    assert data["message"].startswith("Git fetch failed") or data["message"].startswith(
        "Git push failed"
    )
    assert "ghp_wrong" not in response.text
    assert target.log() == []


def test_unknown_workspace_is_reported(service: ServiceProcess, target: Target) -> None:
    response = service.post("/sync", target.body(workspace="no-such-workspace"))
    assert response.status_code == 500
    assert "no-such-workspace" in response.json()["message"]


def test_missing_fields_are_listed_in_contract_order(service: ServiceProcess) -> None:
    response = service.post("/sync", {"git_token": "x" * 10})
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "message": "Missing required fields: windmill_token, git_remote_url",
        "error": "bad_request",
    }


def test_concurrent_requests_for_one_target_share_one_history(
    service: ServiceProcess, target: Target
) -> None:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: service.post("/sync", target.body()), range(6)))

    assert [r.status_code for r in responses] == [200] * 6
    # Requests that shared the first run all report its change; one commit in all.
    commits = {r.json()["commit"] for r in responses}
    assert len(commits) == 1
    assert target.log()[0] in commits


def test_requests_for_two_targets_run_side_by_side(
    service: ServiceProcess, windmill, git_server
) -> None:
    slow, fast = new_target(windmill, git_server), new_target(windmill, git_server)
    windmill.set_fault("tarball", "delay:6", workspace=slow.workspace_id)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow_future = pool.submit(service.post, "/sync", slow.body())
            fast_response = pool.submit(service.post, "/sync", fast.body()).result()
            # The fast target finished while the slow one was still pulling.
            assert fast_response.status_code == 200
            assert not slow_future.done()
            slow_response = slow_future.result()
            assert slow_response.status_code == 200
    finally:
        windmill.set_fault("tarball", None, workspace=slow.workspace_id)
    assert slow.log() == made(slow_response.json())
    assert fast.log() == made(fast_response.json())


def test_human_files_survive_and_history_stays_linear(
    service: ServiceProcess, target: Target, git_server
) -> None:
    first = service.post("/sync", target.body()).json()
    human = git_server.clone_and_commit(
        target.repo,
        {"README.md": b"# Our Windmill backup\n", "notes/ops.txt": b"hello\n"},
        "docs: add a README",
    )
    target.workspace.add_script("f/team/after_human", language="bash", content="echo hi\n")

    response = service.post("/sync", target.body())

    assert response.status_code == 200, response.text
    log = target.log()
    assert log == [*made(response.json()), human, *made(first)]
    tree = target.tree()
    assert tree["README.md"] == b"# Our Windmill backup\n"
    assert tree["notes/ops.txt"] == b"hello\n"
    assert "f/team/after_human.sh" in tree


def test_one_shot_cli_reads_secrets_from_environment_or_stdin(
    target: Target, windmill, ca_pem: Path, tmp_path: Path
) -> None:
    exe = CLI
    env = cli_env(tmp_path, windmill, ca_pem, LOG_FORMAT="json")
    args = [
        str(exe),
        "sync",
        "--workspace",
        target.workspace_id,
        "--git-remote-url",
        target.remote_url,
    ]

    from_env = subprocess.run(
        args,
        env={**env, "WINDMILL_TOKEN": WINDMILL_TOKEN, "GIT_TOKEN": GIT_TOKEN},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert from_env.returncode == 0, from_env.stdout + from_env.stderr
    assert '"changed": true' in from_env.stdout
    target.workspace.add_script("f/team/cli_added", language="bash", content="echo cli\n")
    from_stdin = subprocess.run(
        [*args, "--secrets-from-stdin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        input=f'{{"windmill_token": "{WINDMILL_TOKEN}", "git_token": "{GIT_TOKEN}"}}',
    )
    assert from_stdin.returncode == 0, from_stdin.stdout + from_stdin.stderr
    assert target.log()[0] == json.loads(from_stdin.stdout)["commit"]
    assert target.log()[1:] == made(json.loads(from_env.stdout))
    assert "f/team/cli_added.sh" in target.tree()

    missing = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "Missing required fields: windmill_token, git_token" in missing.stdout
