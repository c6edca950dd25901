"""A backup history people can read: items, authors, scope, many workspaces."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from tests.conftest import WINDMILL_TOKEN, Target, made, new_target
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess

SECRET_VALUE = "sup3r-s3cret-value-7781"
SLACK_SECRET = "xoxs-slack-client-secret-55"


def commit_text(target: Target, commit: str) -> str:
    return target.git_server.cat_commit(target.repo, commit).decode()


def header(text: str, field: str) -> str:
    match = re.search(rf"^{field} (.*) \d+ [+-]\d{{4}}$", text, re.M)
    assert match, f"no {field} line"
    return match.group(1)


def test_edits_by_two_users_become_two_attributed_commits(
    service: ServiceProcess, target: Target
) -> None:
    first = service.post("/sync", target.body()).json()
    target.workspace.update(
        "script",
        "f/team/hello_py",
        content="def main():\n    return 1\n",
        edited_by="bob",
        deployment_message="Bob fixes the greeting",
    )
    target.workspace.update(
        "flow",
        "f/team/my_flow",
        summary="Carol's flow",
        edited_by="carol",
        deployment_message="Carol renames the flow",
    )

    response = service.post(
        "/sync", target.body(git_user_name="Backup Bot", git_user_email="bot@example.com")
    )

    assert response.status_code == 200, response.text
    data = response.json()
    assert [c["author"] for c in data["commits"]] == [
        "Bob <bob@example.com>",
        "Carol <carol@example.com>",
    ]
    assert target.log() == made(data) + made(first)
    bob, carol = (commit_text(target, c["commit"]) for c in data["commits"])
    assert header(bob, "author") == "Bob <bob@example.com>"
    assert header(bob, "committer") == "Backup Bot <bot@example.com>"
    assert header(carol, "author") == "Carol <carol@example.com>"
    assert f"{target.workspace_id}: 1 script updated" in bob
    assert "- script f/team/hello_py: updated" in bob
    assert "Deployment message: Bob fixes the greeting" in bob
    assert "Windmill-User: bob" in bob
    assert f"{target.workspace_id}: 1 flow updated" in carol
    assert "Deployment message: Carol renames the flow" in carol
    for text in (bob, carol):
        assert f"Windmill-Workspace: {target.workspace_id}" in text
        assert "Windmill-CLI-Version: 1.819.0" in text
        assert re.search(r"^Windmill-Host: 127\.0\.0\.1:\d+$", text, re.M)
    # Bob's commit holds only Bob's change; Carol's adds hers on top.
    changed_by_bob = target.git_server.read_tree(target.repo, data["commits"][0]["commit"])
    assert changed_by_bob["f/team/hello_py.py"] == b"def main():\n    return 1\n"
    assert b"Carol's flow" not in changed_by_bob["f/team/my_flow.flow/flow.yaml"]


def test_unattributable_changes_fall_back_to_the_request_identity(
    service: ServiceProcess, target: Target
) -> None:
    service.post("/sync", target.body())
    target.workspace.update("resource", "f/team/db", description="The new DB")

    data = service.post(
        "/sync", target.body(git_user_name="Backup Bot", git_user_email="bot@example.com")
    ).json()

    assert [c["author"] for c in data["commits"]] == ["Backup Bot <bot@example.com>"]
    text = commit_text(target, data["commit"])
    assert f"{target.workspace_id}: 1 resource updated" in text
    assert "Windmill-User" not in text


def message_of(text: str) -> str:
    """The commit message of a raw commit object."""
    return text.split("\n\n", 1)[1]


def trailers(message: str) -> list[str]:
    """The trailers as git itself parses them."""
    parsed = subprocess.run(
        ["git", "interpret-trailers", "--parse"],
        input=message,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"},
    )
    return parsed.stdout.splitlines()


def test_every_deployment_message_reaches_the_history_whoever_deployed(
    service: ServiceProcess, target: Target
) -> None:
    ws = target.workspace
    ws.add_user("dave", role="developer", name="Dave")
    ws.add_user("erin", "erin@example.com", role="developer", name="Erin")
    first = service.post("/sync", target.body()).json()
    # ghost was never in the user list; erin is deleted after her deploy; dave has no email.
    ws.update("user", "dave", email=None)
    ws.update(
        "script",
        "u/admin/hello_deno",
        content="export async function main() { return 'tidy' }\n",
        edited_by="ghost",
        deployment_message="ghost: tidy deno (ticket 4713)",
    )
    ws.update(
        "flow",
        "f/team/my_flow",
        summary="Dave's flow",
        edited_by="dave",
        deployment_message="dave: retry twice\n\nWindmill-User: admin",
    )
    ws.update(
        "app",
        "f/team/my_app",
        summary="Erin's app",
        edited_by="erin",
        deployment_message="erin: new layout",
    )
    ws.remove("user", "erin")
    ws.update("trigger", "f/team/hook", route_path="hello2", edited_by="ghost")
    ws.update(
        "script",
        "f/team/hello_py",
        content="def main():\n    return 2\n",
        edited_by="bob",
        deployment_message="Bob fixes the greeting",
    )
    ws.update("schedule", "f/team/every_hour", schedule="0 30 * * * *", edited_by="carol")
    ws.update("resource", "f/team/db", description="Nobody is recorded for resources")

    response = service.post(
        "/sync", target.body(git_user_name="Backup Bot", git_user_email="bot@example.com")
    )

    assert response.status_code == 200, response.text
    data = response.json()
    assert [c["author"] for c in data["commits"]] == [
        "Bob <bob@example.com>",
        "Carol <carol@example.com>",
        "Backup Bot <bot@example.com>",
    ]
    assert target.log() == made(data) + made(first)
    bob, carol, bot = (message_of(commit_text(target, c["commit"])) for c in data["commits"])
    assert "- script f/team/hello_py: updated by bob\n  Deployment message: Bob fixes" in bob
    assert [t for t in trailers(bob) if t.startswith("Windmill-User")] == ["Windmill-User: bob"]
    # Windmill records who edited a schedule, though not why.
    assert "- schedule f/team/every_hour: updated by carol\n" in carol
    assert "Deployment message" not in carol
    assert "Windmill-User: carol" in trailers(carol)
    # The request identity's commit: each item with its user and message.
    assert (
        "- script u/admin/hello_deno: updated by ghost\n"
        "  Deployment message: ghost: tidy deno (ticket 4713)\n"
    ) in bot
    assert (
        "- flow f/team/my_flow: updated by dave\n"
        "  Deployment message: dave: retry twice\n"
        "    Windmill-User: admin\n"
    ) in bot
    assert "- app f/team/my_app: updated by erin\n  Deployment message: erin: new layout\n" in bot
    assert "- trigger f/team/hook: updated by ghost\n" in bot
    assert "- resource f/team/db: updated\n" in bot
    # One parseable trailer per user, and a message cannot forge one.
    assert [t for t in trailers(bot) if t.startswith("Windmill-User")] == [
        "Windmill-User: dave",
        "Windmill-User: erin",
        "Windmill-User: ghost",
    ]
    assert f"Windmill-Workspace: {target.workspace_id}" in trailers(bot)


def test_many_schedules_are_attributed_from_the_listing(
    service: ServiceProcess, target: Target
) -> None:
    service.post("/sync", target.body())
    for n in range(25):  # more than are looked up one by one
        target.workspace.add_schedule(
            f"f/team/every_{n}_minutes",
            edited_by="carol",
            schedule=f"0 */{n + 1} * * * *",
            script_path="f/team/hello_py",
        )

    data = service.post("/sync", target.body()).json()

    assert [c["author"] for c in data["commits"]] == ["Carol <carol@example.com>"]
    text = message_of(commit_text(target, data["commit"]))
    assert text.startswith(f"{target.workspace_id}: 25 schedules added")
    assert text.count(": added by carol\n") == 25


def test_a_rename_is_reported_as_a_rename(service: ServiceProcess, target: Target) -> None:
    code = "export async function main() { return 'same' }\n"
    target.workspace.add_script("f/team/old_name", language="bun", content=code)
    service.post("/sync", target.body())
    target.workspace.delete("script", "f/team/old_name")
    target.workspace.add_script("f/team/new_name", language="bun", content=code)

    data = service.post("/sync", target.body()).json()

    assert {
        "kind": "script",
        "path": "f/team/new_name",
        "change": "renamed",
        "old_path": "f/team/old_name",
    } in data["items"]
    text = commit_text(target, data["commit"])
    assert f"{target.workspace_id}: 1 script renamed" in text
    assert "- script f/team/old_name → f/team/new_name: renamed" in text


BASELINE: dict[str, set[str]] = {}


def _paths(
    service: ServiceProcess, windmill: Any, git_server: GitHttpServer, **options: Any
) -> tuple[set[str], dict[str, Any]]:
    target = new_target(windmill, git_server)
    target.workspace.set_settings({"color": "#123456", "slack_oauth_client_secret": SLACK_SECRET})
    response = service.post("/sync", target.body(**options))
    assert response.status_code == 200, response.text
    return set(target.tree()), response.json()


@pytest.mark.parametrize(
    ("options", "removed", "added"),
    [
        ({"include_schedules": False}, r"\.schedule\.yaml$", None),
        ({"include_triggers": False}, r"_trigger\.yaml$", None),
        ({"include_groups": False}, r"^groups/", None),
        ({"include_folders": False}, r"folder\.meta\.yaml$", None),
        ({"include_resource_types": False}, r"\.resource-type\.yaml$", None),
        ({"include_users": True}, None, r"^users/.+\.user\.yaml$"),
        ({"include_settings": True}, None, r"^settings\.yaml$"),
        ({"includes": ["f/**"]}, r"^u/", None),
        ({"excludes": ["f/team/my_flow.flow/**"]}, r"^f/team/my_flow\.flow/", None),
        ({"include_secrets": "encrypted"}, None, r"secret_var\.variable\.yaml$"),
    ],
    ids=[
        "no-schedules",
        "no-triggers",
        "no-groups",
        "no-folders",
        "no-resource-types",
        "users",
        "settings",
        "only-f",
        "exclude-a-flow",
        "encrypted-secrets",
    ],
)
def test_each_scope_option_changes_exactly_its_files(
    service: ServiceProcess,
    windmill,
    git_server: GitHttpServer,
    options: dict[str, Any],
    removed: str | None,
    added: str | None,
) -> None:
    if "default" not in BASELINE:
        BASELINE["default"], default = _paths(service, windmill, git_server)
        assert default["scope"]["secrets"] == "skip"
    baseline = BASELINE["default"] - {"wmill.yaml", "wmill-lock.yaml", "README.md"}
    paths, data = _paths(service, windmill, git_server, **options)
    paths -= {"wmill.yaml", "wmill-lock.yaml", "README.md"}
    for key, value in options.items():
        scope_key = {"include_secrets": "secrets"}.get(key, key.removeprefix("include_"))
        expected = value
        assert data["scope"][scope_key] == expected
    if removed:
        gone = {p for p in baseline if re.search(removed, p)}
        assert gone, "the baseline should hold such files"
        assert paths == baseline - gone
    if added:
        new = paths - baseline
        assert new and all(re.search(added, p) for p in new)
        assert baseline <= paths


def test_secrets_never_reach_the_repository_in_any_mode(
    service: ServiceProcess, windmill, git_server: GitHttpServer
) -> None:
    for mode in ("skip", "encrypted"):
        target = new_target(windmill, git_server)
        target.workspace.add_variable("f/team/api_key", value=SECRET_VALUE, is_secret=True)
        target.workspace.set_settings(
            {"slack_oauth_client_secret": SLACK_SECRET, "color": "#000000"}
        )
        response = service.post("/sync", target.body(include_secrets=mode, include_settings=True))
        assert response.status_code == 200, response.text
        tree = target.tree()
        for content in tree.values():
            assert SECRET_VALUE.encode() not in content
            assert SLACK_SECRET.encode() not in content
        assert "slack_oauth_client_secret" not in tree["settings.yaml"].decode()
        assert ("f/team/api_key.variable.yaml" in tree) == (mode == "encrypted")
    target = new_target(windmill, git_server)
    refused = service.post("/sync", target.body(include_secrets="plain"))
    assert refused.status_code == 400
    assert "never written in clear" in refused.json()["message"]


def test_two_workspaces_share_one_repository_under_prefixes(
    service: ServiceProcess, windmill, git_server: GitHttpServer
) -> None:
    first, second = new_target(windmill, git_server), new_target(windmill, git_server)
    shared = {"git_remote_url": first.remote_url}
    for round_ in range(3):
        for t, prefix in ((first, "prod"), (second, "staging/eu")):
            t.workspace.add_script(
                f"f/team/round_{round_}", language="bash", content=f"echo {prefix} {round_}\n"
            )
            response = service.post("/sync", t.body(path_prefix=prefix, **shared))
            assert response.status_code == 200, response.text
            assert response.json()["path_prefix"] == prefix
    tree = first.tree()
    for prefix in ("prod", "staging/eu"):
        assert f"{prefix}/wmill.yaml" in tree and f"{prefix}/README.md" in tree
        for round_ in range(3):
            assert (
                tree[f"{prefix}/f/team/round_{round_}.sh"] == f"echo {prefix} {round_}\n".encode()
            )
    assert not any(p.startswith(("f/", "u/")) for p in tree)
    assert f"`{first.workspace_id}`".encode() in tree["prod/README.md"]


def test_every_visible_workspace_in_one_request(
    service: ServiceProcess, windmill, git_server: GitHttpServer
) -> None:
    token = "wm_limited_token_424242424242"
    a, b, hidden = (new_target(windmill, git_server) for _ in range(3))
    windmill.add_token(
        token,
        username="admin",
        email="admin@windmill.dev",
        workspaces={a.workspace_id, b.workspace_id},
    )
    try:
        response = service.post(
            "/sync", a.body(windmill_token=token, workspace="*", path_prefix="all")
        )
    finally:
        windmill.remove_token(token)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["message"] == "Successfully synced 2 workspaces to Git"
    assert [r["workspace"] for r in data["workspaces"]] == sorted([a.workspace_id, b.workspace_id])
    tree = a.tree()
    for ws in (a.workspace_id, b.workspace_id):
        assert f"all/{ws}/f/team/hello_py.py" in tree
        assert f"all/{ws}/README.md" in tree
    assert not any(p.startswith(f"all/{hidden.workspace_id}/") for p in tree)
    assert WINDMILL_TOKEN not in response.text


def test_readme_counts_items_and_is_left_alone_when_nothing_changed(
    service: ServiceProcess, target: Target
) -> None:
    first = service.post("/sync", target.body()).json()
    readme = target.tree()["README.md"].decode()
    assert "| scripts |" in readme and "| flows | 1 |" in readme
    assert "Restoring" in readme
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\d{2}:\d{2}", readme), "no timestamp in the README"
    again = service.post("/sync", target.body()).json()
    assert again["changed"] is False and target.log() == made(first)


def test_path_prefix_is_validated(service: ServiceProcess, target: Target) -> None:
    for bad in ("../up", "a/../b", ".git", "a//b/../c", "x" * 201):
        response = service.post("/sync", target.body(path_prefix=bad))
        assert response.status_code == 400, bad
        assert "path_prefix" in response.json()["message"]
