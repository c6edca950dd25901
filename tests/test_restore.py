"""Restore: from a Git reference back into a Windmill workspace, safely."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.conftest import CLI, GIT_TOKEN, WINDMILL_TOKEN, Target, cli_env, new_target
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import ExportOptions, WindmillEmulator

# What a default backup holds: everything but secret values, users and settings.
BACKED_UP = replace(
    ExportOptions.everything(), skip_secrets=True, include_users=False, include_settings=False
)


def comparable(export: dict[str, bytes]) -> dict[str, Any]:
    """Entries parsed (JSON key order is not a difference), workspace-independent."""
    return {
        name: json.loads(data) if name.endswith(".json") else data for name, data in export.items()
    }


def restore_body(source: Target, workspace: str, **extra: Any) -> dict[str, Any]:
    return {
        "windmill_token": WINDMILL_TOKEN,
        "git_remote_url": source.remote_url,
        "git_token": GIT_TOKEN,
        "workspace": workspace,
        **extra,
    }


def test_round_trip_into_an_empty_workspace(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    assert service.post("/sync", target.body()).status_code == 200
    scratch = windmill.workspace(f"{target.workspace_id}-drill")
    windmill.clear_requests()

    response = service.post("/restore", restore_body(target, scratch.id, apply=True))

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["applied"] is True and data["dry_run"] is False
    assert data["counts"]["added"] > 10 and data["counts"]["deleted"] == 0
    kinds = {i["kind"] for i in data["items"]}
    assert {
        "script",
        "flow",
        "app",
        "resource",
        "resource type",
        "variable",
        "folder",
        "schedule",
        "trigger",
    } <= kinds
    assert comparable(scratch.export(BACKED_UP)) == comparable(target.workspace.export(BACKED_UP))


def test_dry_run_is_the_default_and_writes_nothing(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    service.post("/sync", target.body())
    scratch = windmill.workspace(f"{target.workspace_id}-dry")
    windmill.clear_requests()

    response = service.post("/restore", restore_body(target, scratch.id))

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["dry_run"] is True and data["applied"] is False
    assert data["message"].startswith("Dry run: would restore")
    assert data["counts"]["added"] > 10
    assert [r for r in windmill.write_requests() if r.workspace == scratch.id] == []
    assert scratch.export(BACKED_UP) == {}


def test_point_in_time_restore_of_one_flow(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    service.post("/sync", target.body())
    target.workspace.update("flow", "f/team/my_flow", summary="Version two", edited_by="bob")
    target.workspace.update("script", "f/team/hello_py", content="def main():\n    return 2\n")
    service.post("/sync", target.body())

    history = service.get(
        "/history",
        params={
            "workspace": target.workspace_id,
            "git_remote_url": target.remote_url,
            "path": "f/team/my_flow",
        },
    ).json()
    assert history["success"] is True
    flow_commits = [c["commit"] for c in history["commits"]]
    assert len(flow_commits) == 2 and "Version two" not in history["commits"][1]["subject"]
    assert all(
        any(f.startswith("f/team/my_flow.flow/") for f in c["files"]) for c in history["commits"]
    )
    windmill.clear_requests()

    response = service.post(
        "/restore",
        restore_body(
            target,
            target.workspace_id,
            git_ref=flow_commits[1],
            apply=True,
            includes=["f/team/my_flow.flow/**"],
        ),
    )

    assert response.status_code == 200, response.text
    assert [i["path"] for i in response.json()["items"]] == ["f/team/my_flow"]
    writes = [r for r in windmill.write_requests() if r.workspace == target.workspace_id]
    assert writes and all(r.path.endswith("/flows/update/f/team/my_flow") for r in writes)
    assert target.workspace.get("flow", "f/team/my_flow").data["summary"] != "Version two"
    script = target.workspace.get("script", "f/team/hello_py").data["content"]
    assert script == "def main():\n    return 2\n"  # untouched


def test_deletions_need_consent(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    service.post("/sync", target.body())
    target.workspace.add_script("f/team/made_after_backup", language="bash", content="echo\n")

    kept = service.post("/restore", restore_body(target, target.workspace_id, apply=True))

    assert kept.status_code == 200, kept.text
    skipped = {c["path"] for c in kept.json()["skipped_deletions"]}
    assert "f/team/made_after_backup.sh" in skipped
    assert "f/team/made_after_backup" in target.workspace.paths("script")

    deleted = service.post(
        "/restore", restore_body(target, target.workspace_id, apply=True, allow_deletions=True)
    )
    assert deleted.status_code == 200, deleted.text
    assert {"kind": "script", "path": "f/team/made_after_backup", "change": "deleted"} in (
        deleted.json()["items"]
    )
    assert target.workspace.get("script", "f/team/made_after_backup").meta.archived is not False


def test_mass_deletion_share_applies_to_restores(
    service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    source = new_target(windmill, git_server, seed=False)
    source.workspace.add_script("f/a/only", language="bash", content="echo\n")
    service.post("/sync", source.body())
    busy = new_target(windmill, git_server)

    response = service.post(
        "/restore", restore_body(source, busy.workspace_id, apply=True, allow_deletions=True)
    )

    assert response.status_code == 409
    assert "allow_mass_deletion" in response.json()["message"]
    assert [r for r in windmill.write_requests() if r.workspace == busy.workspace_id] == []


def test_a_restore_cut_short_says_what_was_applied(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    service.post("/sync", target.body())
    scratch = windmill.workspace(f"{target.workspace_id}-broken")
    windmill.set_fault("scripts/create", "500", workspace=scratch.id)
    try:
        response = service.post("/restore", restore_body(target, scratch.id, apply=True))
    finally:
        windmill.set_fault("scripts/create", None, workspace=scratch.id)
    assert response.status_code == 500
    data = response.json()
    assert data["message"].startswith("Restore stopped part-way:")
    assert data["not_applied"], "the scripts were not applied"
    assert all(c["path"] for c in data["applied"])
    applied_kinds = {i["kind"] for i in data["items_applied"]}
    assert "script" not in applied_kinds and "folder" in applied_kinds
    assert GIT_TOKEN not in response.text and WINDMILL_TOKEN not in response.text


def test_restore_validation(service: ServiceProcess, target: Target) -> None:
    no_target = service.post(
        "/restore", {k: v for k, v in restore_body(target, "x").items() if k != "workspace"}
    )
    assert no_target.status_code == 400
    assert no_target.json()["message"] == "Missing required fields: workspace"
    for field, value in (
        ("git_ref", "--upload-pack=x"),
        ("workspace", "*"),
        ("include_secrets", "plain"),
        ("git_ref", "a..b"),
    ):
        body = {**restore_body(target, "ws"), field: value}
        response = service.post("/restore", body)
        assert response.status_code == 400, (field, value)
        assert field in response.json()["message"]
    service.post("/sync", target.body())
    unknown = service.post(
        "/restore", restore_body(target, target.workspace_id, git_ref="no-such-branch")
    )
    assert unknown.status_code == 400 and "no-such-branch" in unknown.json()["message"]


def test_one_shot_restore_and_history(
    target: Target, windmill: WindmillEmulator, ca_pem: Path, tmp_path: Path
) -> None:
    exe = CLI
    env = cli_env(tmp_path, windmill, ca_pem, WINDMILL_TOKEN=WINDMILL_TOKEN, GIT_TOKEN=GIT_TOKEN)
    common = ["--git-remote-url", target.remote_url]
    synced = subprocess.run(
        [str(exe), "sync", "--workspace", target.workspace_id, *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr
    scratch = windmill.workspace(f"{target.workspace_id}-cli")

    dry = subprocess.run(
        [str(exe), "restore", "--workspace", scratch.id, *common],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert json.loads(dry.stdout)["dry_run"] is True
    assert scratch.export(BACKED_UP) == {}
    applied = subprocess.run(
        [
            str(exe),
            "restore",
            "--workspace",
            scratch.id,
            "--apply",
            "--include",
            "f/team/hello_py*",
            *common,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert scratch.paths("script") == ["f/team/hello_py"]

    history = subprocess.run(
        [
            str(exe),
            "history",
            "--workspace",
            target.workspace_id,
            *common,
            "--path",
            "f/team/hello_py",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 0, history.stdout + history.stderr
    assert len(json.loads(history.stdout)["commits"]) == 1
