"""The Windmill emulator checked against the real, pinned `wmill` CLI.

Every CLI run gets its own HOME and `--config-dir` and an environment built from scratch
(PATH, HOME, WM_TOKEN, WM_WORKSPACE, BASE_INTERNAL_URL), the way the service runs it: no
`--token`, always `--yes`. The fixtures here are self-contained so this file also runs
without the suite's conftest.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers.windmill_emulator import (
    ExportOptions,
    WindmillEmulator,
    Workspace,
    decrypt_secret,
    script_extension,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
WMILL_CLI = REPO_ROOT / "node_modules" / "windmill-cli" / "esm" / "main.js"
TOKEN = "wm_emu_tok_3f9a1c2b7d"
LIMITED_TOKEN = "wm_emu_limited_8e7d6c"
CLI_TIMEOUT = 120

# The wmill.yaml the service writes (tests/..., gitsync/windmill/wmill.py).
SERVICE_WMILL_YAML = """\
defaultTs: bun
includes:
  - f/**
  - u/**
excludes: []
skipVariables: false
skipResources: false
skipResourceTypes: false
skipSecrets: true
includeSchedules: true
includeTriggers: true
includeUsers: false
includeGroups: true
includeSettings: false
includeKey: false
"""

# What `wmill sync pull` writes for seed_basic with SERVICE_WMILL_YAML.
BASIC_PULL_FILES = {
    "wmill.yaml",
    "wmill-lock.yaml",
    "c_my_db.resource-type.yaml",
    "groups/devs.group.yaml",
    "f/ops/folder.meta.yaml",
    "f/team/folder.meta.yaml",
    "f/ops/cleanup.sh",
    "f/ops/cleanup.script.yaml",
    "f/ops/health_go.go",
    "f/ops/health_go.script.yaml",
    "f/ops/health_go.script.lock",
    "f/team/active_users.pg.sql",
    "f/team/active_users.script.yaml",
    "f/team/hello_py.py",
    "f/team/hello_py.script.yaml",
    "f/team/hello_py.script.lock",
    "u/admin/hello_bun.ts",
    "u/admin/hello_bun.script.yaml",
    "u/admin/hello_bun.script.lock",
    "u/admin/hello_deno.deno.ts",
    "u/admin/hello_deno.script.yaml",
    "f/team/db.resource.yaml",
    "f/team/pg.resource.yaml",
    "f/team/plain_var.variable.yaml",
    "f/team/my_flow.flow/flow.yaml",
    "f/team/my_flow.flow/compute_things.inline_script.py",
    "f/team/my_flow.flow/compute_things.inline_script.lock",
    "f/team/my_flow.flow/double_each.inline_script.ts",
    "f/team/my_flow.flow/say_big.inline_script.sh",
    "f/team/my_flow.flow/notify_failure.inline_script.ts",
    "f/team/my_app.app/app.yaml",
    "f/team/my_app.app/say_hi.inline_script.ts",
    "f/team/my_app.app/background.inline_script.py",
    "f/team/my_app.app/background.inline_script.lock",
    "f/team/every_hour.schedule.yaml",
    "f/team/hook.http_trigger.yaml",
}

_ids = itertools.count(1)


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[WindmillEmulator]:
    with WindmillEmulator() as em:
        em.add_token(TOKEN)
        em.add_token(
            LIMITED_TOKEN,
            username="bob",
            email="bob@example.com",
            name="Bob",
            is_admin=False,
            super_admin=False,
            workspaces={"limited"},
        )
        yield em


@pytest.fixture
def ws(emulator: WindmillEmulator) -> Workspace:
    """A fresh workspace with seed_basic, and a clean request log and fault table."""
    emulator.clear_faults()
    emulator.clear_requests()
    return emulator.workspace(f"emu{next(_ids)}").seed_basic()


@dataclass
class Run:
    code: int
    out: str  # stdout + stderr: the CLI writes most errors to stdout (§5)


def run_wmill(
    emulator: WindmillEmulator,
    cwd: Path,
    workspace: str,
    *args: str,
    token: str = TOKEN,
    timeout: float = CLI_TIMEOUT,
) -> Run:
    """One CLI run in `cwd` with a fresh HOME and config dir and a from-scratch env."""
    home = cwd.parent / f"home-{next(_ids)}"
    home.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "WM_TOKEN": token,
        "WM_WORKSPACE": workspace,
        "BASE_INTERNAL_URL": emulator.base_url,
    }
    proc = subprocess.run(
        ["node", str(WMILL_CLI), *args, "--yes", "--config-dir", str(home / "config")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def new_dir(tmp_path: Path, name: str = "pull") -> Path:
    d = tmp_path / f"{name}-{next(_ids)}"
    d.mkdir()
    (d / "wmill.yaml").write_text(SERVICE_WMILL_YAML)
    return d


def pull(
    emulator: WindmillEmulator, d: Path, workspace: str, *args: str, token: str = TOKEN
) -> Run:
    return run_wmill(emulator, d, workspace, "sync", "pull", *args, token=token)


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def http_get(
    emulator: WindmillEmulator, path: str, token: str | None = TOKEN, timeout: float = 10
) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, errors included."""
    req = urllib.request.Request(emulator.base_url + path.lstrip("/"))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def tarball_query(**overrides: str) -> str:
    """The exact query the CLI sends (§2.2), with overrides."""
    params = {
        "archive_type": "zip",
        "plain_secret": "false",
        "skip_variables": "false",
        "skip_resources": "false",
        "skip_secrets": "false",
        "include_schedules": "false",
        "include_triggers": "false",
        "include_users": "false",
        "include_groups": "false",
        "include_settings": "false",
        "include_key": "false",
        "include_workspace_dependencies": "true",
        "skip_datatable_migrations": "false",
        "default_ts": "bun",
        "skip_resource_types": "false",
        "settings_version": "v2",
        "preserve_extra_perms": "true",
        "sync_behavior_version": "v0",
        **overrides,
    }
    return "&".join(f"{k}={v}" for k, v in params.items())


def fetch_archive(emulator: WindmillEmulator, workspace: str, **overrides: str) -> zipfile.ZipFile:
    status, _, body = http_get(
        emulator, f"api/w/{workspace}/workspaces/tarball?" + tarball_query(**overrides)
    )
    assert status == 200, body
    return zipfile.ZipFile(io.BytesIO(body))


# --- HTTP surface (§1, §2.1, §6) ----------------------------------------------------------


def test_version_needs_no_auth(emulator: WindmillEmulator) -> None:
    assert http_get(emulator, "api/version", token=None) == (
        200,
        "text/plain; charset=utf-8",
        b"CE v1.819.0",
    )


@pytest.mark.parametrize(
    "path",
    [
        "api/users/whoami",
        "api/w/{w}/users/whoami",
        "api/w/{w}/workspaces/list_ws_specific",
        "api/w/{w}/workspaces/tarball?archive_type=zip",
        "api/w/{w}/shared_ui/get",
        "api/workspaces/list",
    ],
)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_unknown_token_is_401_text(
    emulator: WindmillEmulator, ws: Workspace, path: str, token: str | None
) -> None:
    status, ctype, body = http_get(emulator, path.format(w=ws.id), token=token)
    assert (status, ctype, body) == (
        401,
        "text/plain; charset=utf-8",
        b"Not authorized: Unauthorized",
    )
    assert emulator.requests[-1].token_ok is False


def test_token_limited_to_other_workspaces_gets_401(
    emulator: WindmillEmulator, ws: Workspace
) -> None:
    emulator.workspace("limited")
    assert http_get(emulator, "api/users/whoami", LIMITED_TOKEN)[0] == 200
    for path in ("users/whoami", "workspaces/tarball?archive_type=zip"):
        status, _, body = http_get(emulator, f"api/w/{ws.id}/{path}", LIMITED_TOKEN)
        assert (status, body) == (401, b"Not authorized: Unauthorized")
    assert http_get(emulator, "api/w/limited/users/whoami", LIMITED_TOKEN)[0] == 200


def test_unknown_workspace_is_404_on_tarball(emulator: WindmillEmulator) -> None:
    status, ctype, body = http_get(emulator, "api/w/nope/workspaces/tarball?archive_type=zip")
    assert status == 404 and ctype.startswith("text/plain")
    assert body.startswith(b"Not found: ")


def test_unknown_route_is_text_404(emulator: WindmillEmulator) -> None:
    status, ctype, body = http_get(emulator, "api/no/such/thing")
    assert status == 404 and ctype.startswith("text/plain") and body.startswith(b"Not found")


def test_whoami_bodies(emulator: WindmillEmulator, ws: Workspace) -> None:
    status, ctype, body = http_get(emulator, "api/users/whoami")
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body)["email"] == "admin@windmill.dev"
    user = json.loads(http_get(emulator, f"api/w/{ws.id}/users/whoami")[2])
    assert user["workspace_id"] == ws.id and user["is_admin"] is True
    assert user["username"] == "admin" and "team" in user["folders"]


def test_pull_side_small_endpoints(emulator: WindmillEmulator, ws: Workspace) -> None:
    assert json.loads(http_get(emulator, f"api/w/{ws.id}/workspaces/list_ws_specific")[2]) == []
    ext_map = f"api/w/{ws.id}/resources/file_resource_type_to_file_ext_map"
    assert json.loads(http_get(emulator, ext_map)[2]) == {}
    ws.add_resource_type("c_json_file", format_extension="json")
    assert json.loads(http_get(emulator, ext_map)[2]) == {
        "c_json_file": {"format_extension": "json", "is_fileset": False}
    }
    assert json.loads(http_get(emulator, f"api/w/{ws.id}/shared_ui/get")[2]) == {"files": {}}


def test_workspace_listings_follow_the_token(emulator: WindmillEmulator, ws: Workspace) -> None:
    emulator.workspace("limited")
    everything = json.loads(http_get(emulator, "api/workspaces/list")[2])
    assert {ws.id, "limited"} <= {w["id"] for w in everything}
    limited = json.loads(http_get(emulator, "api/workspaces/list", LIMITED_TOKEN)[2])
    assert [w["id"] for w in limited] == ["limited"]
    users = json.loads(http_get(emulator, "api/workspaces/users", LIMITED_TOKEN)[2])
    assert users["email"] == "bob@example.com"
    assert [w["id"] for w in users["workspaces"]] == ["limited"]


def test_request_log_never_holds_the_token(emulator: WindmillEmulator, ws: Workspace) -> None:
    http_get(emulator, f"api/w/{ws.id}/users/whoami")
    assert TOKEN not in repr(emulator.requests)
    assert emulator.requests[-1].token_ok and emulator.requests[-1].workspace == ws.id
    assert emulator.write_requests() == []


# --- the archive (§4.1) -------------------------------------------------------------------


def test_archive_layout_matches_the_server(emulator: WindmillEmulator, ws: Workspace) -> None:
    zf = fetch_archive(emulator, ws.id)
    names = zf.namelist()
    assert names[0] == "f/ops/folder.meta.json"  # folders first, then scripts...
    assert all(not n.endswith("/") for n in names)  # file entries only
    for info in zf.infolist():
        assert info.compress_type == zipfile.ZIP_DEFLATED
        # Stamped when the archive is built, as a server that records build times.
        assert info.date_time[0] >= 2024
        assert info.external_attr >> 16 & 0o777 == 0o777
    jsons = {n: zf.read(n) for n in names if n.endswith(".json")}
    for name, raw in jsons.items():
        assert not raw.endswith(b"\n"), name
        assert raw == json.dumps(json.loads(raw), indent=2, ensure_ascii=False).encode()
        obj = json.loads(raw)
        if isinstance(obj, dict):
            assert (
                not {"workspace_id", "path", "edited_by", "edited_at", "created_by", "archived"}
                & obj.keys()
            ), name
    # Default query: no schedules, triggers, users, groups, settings.
    assert not [n for n in names if n.startswith(("users/", "groups/", "settings"))]
    assert not [n for n in names if n.endswith((".schedule.json", "_trigger.json"))]
    assert "f/team/retired.py" not in names  # archived
    assert "u/admin/flow_state.resource.json" not in names  # `state` resources
    assert json.loads(jsons["f/team/hello_py.script.json"]) == {
        "summary": "Hello Python",
        "description": "says hello",
        "schema": ws.get("script", "f/team/hello_py").data["schema"],
        "lock": ws.get("script", "f/team/hello_py").data["lock"],
        "kind": "script",
    }
    assert json.loads(jsons["u/admin/hello_deno.script.json"])["lock"] is None
    go = json.loads(jsons["f/ops/health_go.script.json"])
    assert go["ws_error_handler_muted"] is True and go["envs"] == ["REGION=eu"]
    assert json.loads(jsons["f/team/folder.meta.json"]) == {
        "display_name": "team",
        "owners": ["u/admin"],
        "extra_perms": {"g/devs": True},
        "summary": "Team folder",
    }
    policy = json.loads(jsons["f/team/my_app.app.json"])["policy"]
    assert "on_behalf_of" not in policy and "on_behalf_of_email" not in policy
    assert policy["execution_mode"] == "publisher" and len(policy["triggerables_v2"]) == 2
    assert "on_behalf_of" in ws.get("app", "f/team/my_app").data["policy"]


def test_archive_secrets(emulator: WindmillEmulator, ws: Workspace) -> None:
    name = "f/team/secret_var.variable.json"
    cipher = json.loads(fetch_archive(emulator, ws.id).read(name))
    assert cipher["is_secret"] is True and cipher["value"] != "s3cr3t-p4ss"
    assert decrypt_secret(ws.encryption_key, cipher["value"]) == "s3cr3t-p4ss"
    # Deterministic: a second export carries the same ciphertext.
    assert json.loads(fetch_archive(emulator, ws.id).read(name)) == cipher
    plain = json.loads(fetch_archive(emulator, ws.id, plain_secret="true").read(name))
    assert plain["value"] == "s3cr3t-p4ss"
    names = fetch_archive(emulator, ws.id, skip_secrets="true").namelist()
    assert name not in names and "f/team/plain_var.variable.json" in names


@pytest.mark.parametrize(
    ("flag", "gone"),
    [
        ("skip_variables", ".variable.json"),
        ("skip_resources", ".resource.json"),
        ("skip_resource_types", ".resource-type.json"),
    ],
)
def test_archive_skip_flags(
    emulator: WindmillEmulator, ws: Workspace, flag: str, gone: str
) -> None:
    assert any(n.endswith(gone) for n in fetch_archive(emulator, ws.id).namelist())
    assert not any(
        n.endswith(gone) for n in fetch_archive(emulator, ws.id, **{flag: "true"}).namelist()
    )


def test_archive_include_flags(emulator: WindmillEmulator, ws: Workspace) -> None:
    zf = fetch_archive(
        emulator,
        ws.id,
        include_schedules="true",
        include_triggers="true",
        include_users="true",
        include_groups="true",
        include_settings="true",
        include_key="true",
    )
    names = set(zf.namelist())
    assert {
        "f/team/every_hour.schedule.json",
        "f/team/hook.http_trigger.json",
        "users/bob@example.com.user.json",
        "groups/devs.group.json",
        "settings.json",
        "encryption_key.json",
    } <= names
    assert "groups/all.group.json" not in names
    assert json.loads(zf.read("users/bob@example.com.user.json")) == {
        "username": "bob",
        "role": "developer",
        "disabled": False,
    }
    assert json.loads(zf.read("groups/devs.group.json")) == {
        "summary": "Developers",
        "members": ["u/bob"],
        "admins": ["u/admin"],
    }
    schedule = json.loads(zf.read("f/team/every_hour.schedule.json"))
    assert schedule["email"] == "admin@windmill.dev" and "extra_perms" not in schedule
    settings = json.loads(zf.read("settings.json"))
    assert settings["name"] == "Test Workspace" and settings["color"] == "#ff0000"
    assert settings["error_handler"] is None and "webhook" not in settings
    assert json.loads(zf.read("encryption_key.json")) == ws.encryption_key


def test_archive_default_ts_and_extensions(emulator: WindmillEmulator, ws: Workspace) -> None:
    bun = set(fetch_archive(emulator, ws.id).namelist())
    assert {
        "u/admin/hello_bun.ts",
        "u/admin/hello_deno.deno.ts",
        "f/ops/cleanup.sh",
        "f/ops/health_go.go",
        "f/team/active_users.pg.sql",
    } <= bun
    deno = set(fetch_archive(emulator, ws.id, default_ts="deno").namelist())
    assert {"u/admin/hello_bun.bun.ts", "u/admin/hello_deno.ts"} <= deno
    assert script_extension("nativets") == "fetch.ts"
    assert script_extension("mssql") == "ms.sql" and script_extension("ansible") == "playbook.yml"


def _entries(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_archive_entries_are_cached_until_the_workspace_changes(ws: Workspace) -> None:
    opts = ExportOptions(archive_type="zip")
    first = ws.archive(opts)
    assert _entries(ws.archive(opts)) == _entries(first)
    ws.add_script("f/team/new_one", language="bash", content="echo 1\n")
    second = ws.archive(opts)
    assert "f/team/new_one.sh" in _entries(second)
    assert "f/team/new_one.sh" not in _entries(first)


def test_archive_bytes_carry_the_build_time(ws: Workspace) -> None:
    # Same entries, different bytes: what a client comparing archives must cope with.
    opts = ExportOptions(archive_type="zip")
    first = ws.archive(opts)
    time.sleep(2.1)  # zip times have a 2-second resolution
    second = ws.archive(opts)
    assert first != second
    assert _entries(first) == _entries(second)
    tar_opts = ExportOptions(archive_type="tar")
    tar_first = ws.archive(tar_opts)
    time.sleep(1.1)
    assert ws.archive(tar_opts) != tar_first


def test_bad_query_value_is_400(emulator: WindmillEmulator, ws: Workspace) -> None:
    status, _, body = http_get(
        emulator, f"api/w/{ws.id}/workspaces/tarball?" + tarball_query(skip_secrets="yes")
    )
    assert status == 400 and body.startswith(b"Bad request: ")


# --- wmill sync pull (§2) -----------------------------------------------------------------


def test_pull_writes_the_basic_workspace(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert set(files_under(d)) == BASIC_PULL_FILES
    # The five GETs of §2, in order, all authenticated.
    assert [(r.method, r.endpoint, r.status, r.token_ok) for r in emulator.requests] == [
        ("GET", e, 200, True)
        for e in ("whoami", "list_ws_specific", "file_ext_map", "tarball", "shared_ui")
    ]
    assert emulator.requests[3].query["skip_secrets"] == "true"
    assert emulator.requests[3].query["include_groups"] == "true"

    hello = ws.get("script", "f/team/hello_py").data
    assert (d / "f/team/hello_py.py").read_text() == hello["content"]
    assert (d / "f/team/hello_py.script.lock").read_text() == hello["lock"]
    meta = read_yaml(d / "f/team/hello_py.script.yaml")
    assert meta["lock"] == "!inline f/team/hello_py.script.lock"
    assert meta["summary"] == "Hello Python" and meta["schema"] == hello["schema"]
    assert "lock" not in read_yaml(d / "u/admin/hello_deno.script.yaml")

    flow = read_yaml(d / "f/team/my_flow.flow/flow.yaml")
    first = flow["value"]["modules"][0]["value"]
    assert first["content"] == "!inline compute_things.inline_script.py"
    assert first["lock"] == "!inline compute_things.inline_script.lock"
    loop = flow["value"]["modules"][1]["value"]["modules"][0]["value"]
    assert loop["content"] == "!inline double_each.inline_script.ts"
    assert flow["value"]["failure_module"]["value"]["content"] == (
        "!inline notify_failure.inline_script.ts"
    )
    assert (d / "f/team/my_flow.flow/double_each.inline_script.ts").read_text() == (
        "export async function main(x: number) {\n  return x * 2;\n}\n"
    )

    app = read_yaml(d / "f/team/my_app.app/app.yaml")
    assert app["summary"] == "My app" and "policy" not in app
    runnable = app["value"]["grid"][0]["data"]["componentInput"]["runnable"]
    assert runnable["inlineScript"]["content"] == "!inline say_hi.inline_script.ts"

    assert read_yaml(d / "f/team/db.resource.yaml") == {
        "value": {"host": "db.local", "port": 5432},
        "description": "The DB",
        "resource_type": "c_my_db",
    }
    rt = read_yaml(d / "c_my_db.resource-type.yaml")
    assert rt["description"] == "My DB type" and rt["schema"]["required"] == ["host"]
    assert read_yaml(d / "f/team/plain_var.variable.yaml")["value"] == "plain-value"
    assert not (d / "f/team/secret_var.variable.yaml").exists()  # skipSecrets
    assert read_yaml(d / "f/team/folder.meta.yaml")["extra_perms"] == {"g/devs": True}
    schedule = read_yaml(d / "f/team/every_hour.schedule.yaml")
    assert schedule["script_path"] == "f/team/hello_py"
    assert schedule["timezone"] == "Europe/Paris"
    assert read_yaml(d / "f/team/hook.http_trigger.yaml")["route_path"] == "hello"
    assert read_yaml(d / "groups/devs.group.yaml") == {
        "summary": "Developers",
        "admins": ["u/admin"],
        "members": ["u/bob"],
    }


def test_root_level_kinds_and_includes(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    """Resource types and groups bypass `includes` (ignoreF); users/settings need their flag."""
    d = tmp_path / "only-f"
    d.mkdir()
    (d / "wmill.yaml").write_text(
        SERVICE_WMILL_YAML.replace("  - u/**\n", "")
        .replace("includeUsers: false", "includeUsers: true")
        .replace("includeSettings: false", "includeSettings: true")
    )
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    files = set(files_under(d))
    assert "c_my_db.resource-type.yaml" in files and "groups/devs.group.yaml" in files
    assert "users/bob@example.com.user.yaml" in files and "settings.yaml" in files
    assert not any(f.startswith("u/") for f in files)


def test_second_pull_without_change_reports_zero(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    before = files_under(d)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert "0 changes to apply" in run.out
    assert files_under(d) == before


def test_pull_reflects_edit_add_remove(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    before = files_under(d)

    ws.update(
        "script",
        "f/team/hello_py",
        content="def main():\n    return 42\n",
        edited_by="bob",
        deployment_message="answer",
    )
    ws.add_script(
        "f/team/brand_new", language="bun", content="export async function main() { return 1 }\n"
    )
    ws.remove("resource", "f/team/db")
    ws.remove("script", "u/admin/hello_deno")
    ws.update("flow", "f/team/my_flow", summary="My flow v2")
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    after = files_under(d)

    changed = {p for p in before.keys() & after.keys() if before[p] != after[p]}
    assert changed == {"f/team/hello_py.py", "f/team/my_flow.flow/flow.yaml", "wmill-lock.yaml"}
    assert after.keys() - before.keys() == {"f/team/brand_new.ts", "f/team/brand_new.script.yaml"}
    assert before.keys() - after.keys() == {
        "f/team/db.resource.yaml",
        "u/admin/hello_deno.deno.ts",
        "u/admin/hello_deno.script.yaml",
    }
    assert after["f/team/hello_py.py"] == b"def main():\n    return 42\n"


def test_bad_token_fails_to_authenticate(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id, token="wm_wrong_token")
    assert run.code == 1, run.out
    # With WM_TOKEN (no --token/--base-url) the CLI takes its "reauth" path, not the
    # `--token` message of spec §6.
    assert "Not a TTY, can't login interactively." in run.out
    assert "Unauthorized: Could not authenticate with the provided credentials" in run.out
    assert [r.endpoint for r in emulator.requests] == ["whoami", "ws_whoami"]
    assert all(r.status == 401 and not r.token_ok for r in emulator.requests)
    assert set(files_under(d)) == {"wmill.yaml"}


def test_token_not_allowed_on_workspace_fails(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    run = pull(emulator, new_dir(tmp_path), ws.id, token=LIMITED_TOKEN)
    assert run.code == 1, run.out
    assert "401" in run.out and "Unauthorized" in run.out
    assert emulator.requests[-1].endpoint == "tarball"


def test_unknown_workspace_fails(emulator: WindmillEmulator, tmp_path: Path) -> None:
    run = pull(emulator, new_dir(tmp_path), "no-such-ws")
    assert run.code == 1, run.out
    assert "Workspace id 'no-such-ws' not found" in run.out


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("500", "Failed to request tarball from API: 500"),
        ("403", "Failed to request tarball from API: 403"),
        ("drop", "fetch failed"),
        ("notzip", "end of central directory"),
    ],
)
def test_tarball_faults_fail_the_pull(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path, fault: str, message: str
) -> None:
    emulator.set_fault("tarball", fault, workspace=ws.id)
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id)
    assert run.code == 1, run.out
    assert message in run.out
    assert set(files_under(d)) == {"wmill.yaml"}


def test_fault_scoped_to_one_workspace(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    emulator.set_fault("tarball", "500", workspace="some-other-ws")
    assert pull(emulator, new_dir(tmp_path), ws.id).code == 0
    emulator.set_fault("*", "500")
    assert pull(emulator, new_dir(tmp_path), ws.id).code == 1
    emulator.set_fault("*", None)
    assert pull(emulator, new_dir(tmp_path), ws.id).code == 0


def test_whoami_faults(emulator: WindmillEmulator, ws: Workspace, tmp_path: Path) -> None:
    for fault in ("500", "403"):
        emulator.set_fault("whoami", fault)
        run = pull(emulator, new_dir(tmp_path), ws.id)
        assert run.code == 1, run.out
        # In env-token mode any whoami error reads like a bad token.
        assert "Could not authenticate with the provided credentials" in run.out
        assert emulator.requests[-1].endpoint == "whoami"  # no workspace whoami after a 500
    emulator.set_fault("whoami", "401")
    run = pull(emulator, new_dir(tmp_path), ws.id)
    assert run.code == 0, run.out  # falls back to the workspace whoami, which works
    assert [r.endpoint for r in emulator.requests[-6:-4]] == ["whoami", "ws_whoami"]


def test_tolerated_failures_do_not_stop_the_pull(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    for endpoint in ("list_ws_specific", "file_ext_map", "shared_ui"):
        emulator.set_fault(endpoint, "500")
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert set(files_under(d)) == BASIC_PULL_FILES


def test_delay_is_waited_for(emulator: WindmillEmulator, ws: Workspace, tmp_path: Path) -> None:
    emulator.set_fault("tarball", "delay:1.5", workspace=ws.id)
    start = time.monotonic()
    run = pull(emulator, new_dir(tmp_path), ws.id)
    assert run.code == 0, run.out
    assert time.monotonic() - start >= 1.5


def test_empty_archive_empties_the_mirror(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    emulator.set_fault("tarball", "empty", workspace=ws.id)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert set(files_under(d)) <= {"wmill.yaml", "wmill-lock.yaml"}


def test_tar_fallback(emulator: WindmillEmulator, ws: Workspace, tmp_path: Path) -> None:
    """A server answering 400 `Invalid Archive Type` to zip gets the tar query (§2 #4b)."""
    emulator.set_fault("tarball", "zip-unsupported", workspace=ws.id)
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert [r.query.get("archive_type") for r in emulator.requests if r.endpoint == "tarball"] == [
        "zip",
        "tar",
    ]
    assert set(files_under(d)) == BASIC_PULL_FILES


def test_hang_and_stop(tmp_path: Path) -> None:
    """A hanging endpoint answers nothing, and stop() still returns promptly."""
    em = WindmillEmulator().start()
    em.add_token(TOKEN)
    em.set_fault("whoami", "hang")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        http_get(em, "api/users/whoami", timeout=0.5)
    start = time.monotonic()
    em.stop()
    assert time.monotonic() - start < 5


def test_set_fault_rejects_unknown_faults(emulator: WindmillEmulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emulator.set_fault("tarball", "explode")


# --- synthetic workspaces -----------------------------------------------------------------


def test_seed_synthetic_is_fast_and_deterministic(emulator: WindmillEmulator) -> None:
    start = time.monotonic()
    a = emulator.workspace(f"synth{next(_ids)}").seed_synthetic(2000, seed=7)
    built = time.monotonic() - start
    opts = ExportOptions.from_query(dict(p.split("=") for p in tarball_query().split("&")))
    start = time.monotonic()
    a_zip = a.archive(opts)
    exported = time.monotonic() - start
    assert built < 3 and exported < 5, (built, exported)
    b = Workspace(a.id).seed_synthetic(2000, seed=7)
    assert _entries(b.archive(opts)) == _entries(a_zip)
    assert sum(len(v) for v in a.items.values()) == 2000
    names = zipfile.ZipFile(io.BytesIO(a_zip)).namelist()
    for suffix in (
        ".py",
        ".ts",
        ".deno.ts",
        ".sh",
        ".pg.sql",
        ".go",
        ".script.json",
        ".flow.json",
        ".app.json",
        ".resource.json",
        ".variable.json",
        ".resource-type.json",
        "folder.meta.json",
    ):
        assert any(n.endswith(suffix) for n in names), suffix
    assert any(n.startswith("u/admin/") for n in names)


def test_pull_synthetic_workspace(emulator: WindmillEmulator, tmp_path: Path) -> None:
    ws = emulator.workspace(f"synth{next(_ids)}").seed_synthetic(60, seed=1)
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    files = set(files_under(d))
    scripts = [p for p, it in ws.items["script"].items() if not it.meta.archived]
    assert all(any(f.startswith(p + ".") for f in files) for p in scripts)
    assert sum(f.endswith("/flow.yaml") for f in files) == len(ws.items["flow"])


# --- wmill sync push (§3) -----------------------------------------------------------------

SERVICE_EXPORT = ExportOptions.from_query(
    {
        "archive_type": "zip",
        "skip_secrets": "true",
        "include_schedules": "true",
        "include_triggers": "true",
        "include_groups": "true",
        "preserve_extra_perms": "true",
    }
)


def push(emulator: WindmillEmulator, d: Path, workspace: str, *args: str) -> Run:
    return run_wmill(emulator, d, workspace, "sync", "push", *args)


def semantic(entries: dict[str, bytes]) -> dict[str, Any]:
    """Archive entries with JSON parsed: key order is the database's business, not ours."""
    return {
        name: json.loads(raw) if name.endswith(".json") else raw for name, raw in entries.items()
    }


def http_send(
    emulator: WindmillEmulator, method: str, path: str, body: Any = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(emulator.base_url + path.lstrip("/"), data=data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_json(emulator: WindmillEmulator, path: str) -> Any:
    status, _, body = http_get(emulator, path)
    assert status == 200, body
    return json.loads(body)


def test_push_into_an_empty_workspace_recreates_it(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    a = new_dir(tmp_path)
    assert pull(emulator, a, ws.id).code == 0
    target = emulator.workspace(f"empty{next(_ids)}")
    emulator.clear_requests()

    run = push(emulator, a, target.id)
    assert run.code == 0, run.out
    assert semantic(target.export(SERVICE_EXPORT)) == semantic(ws.export(SERVICE_EXPORT))
    writes = emulator.write_requests()
    assert writes and all(200 <= r.status < 300 for r in writes)
    # Every per-kind GET found nothing, so each item was created.
    gets = [r for r in emulator.requests if r.endpoint.endswith("/get")]
    assert gets and {r.status for r in gets} == {404}
    creates = [r for r in writes if r.endpoint == "scripts/create"]
    assert len(creates) == 6 and {r.status for r in creates} == {201}
    assert "version" in [r.endpoint for r in emulator.requests]  # mandatory on push
    hello = target.get("script", "f/team/hello_py")
    assert re.fullmatch(r"[0-9a-f]{16}", str(hello.meta.hash))
    assert hello.meta.created_by == "admin"

    # And the new workspace pulls into exactly the same tree.
    b = new_dir(tmp_path)
    assert pull(emulator, b, target.id).code == 0
    assert files_under(b) == files_under(a)


def test_pull_then_push_is_a_no_op(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    emulator.clear_requests()
    run = push(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert "0 changes to apply" in run.out
    assert emulator.write_requests() == []
    assert [r.endpoint for r in emulator.requests] == [
        "whoami",
        "list_ws_specific",
        "workspaces_users",
        "file_ext_map",
        "tarball",
        "version",
    ]


def test_dry_run_push_writes_nothing(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    target = emulator.workspace(f"empty{next(_ids)}")
    emulator.clear_requests()
    run = push(emulator, d, target.id, "--dry-run")
    assert run.code == 0, run.out
    assert emulator.write_requests() == []
    assert target.export(SERVICE_EXPORT) == {}


def test_push_applies_local_edits(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    old_hash = ws.get("script", "f/team/hello_py").meta.hash
    (d / "f/team/hello_py.py").write_text("def main():\n    return 'edited'\n")
    db = read_yaml(d / "f/team/db.resource.yaml")
    db["description"] = "The DB, edited"
    (d / "f/team/db.resource.yaml").write_text(yaml.safe_dump(db))
    for f in (d / "f/team/my_flow.flow").iterdir():
        f.unlink()
    (d / "f/team/my_flow.flow").rmdir()
    (d / "f/team/every_hour.schedule.yaml").unlink()
    (d / "f/team/new_var.variable.yaml").write_text(
        "description: new var\nvalue: hello\nis_secret: false\n"
    )
    group = read_yaml(d / "groups/devs.group.yaml")
    group["members"] = []
    (d / "groups/devs.group.yaml").write_text(yaml.safe_dump(group))
    emulator.clear_requests()

    run = push(emulator, d, ws.id, "--message", "from git")
    assert run.code == 0, run.out
    hello = ws.get("script", "f/team/hello_py")
    assert hello.data["content"] == "def main():\n    return 'edited'\n"
    assert hello.meta.hash != old_hash and hello.meta.deployment_message == "from git"
    assert [v.id for v in hello.history][-2:] == [old_hash, hello.meta.hash]
    create = next(r for r in emulator.requests if r.endpoint == "scripts/create")
    assert create.body["parent_hash"] == old_hash and create.query["skip_if_noop"] == "true"
    assert ws.get("resource", "f/team/db").data["description"] == "The DB, edited"
    assert "f/team/my_flow" not in ws.paths("flow")
    flow_deletes = [r for r in emulator.requests if r.endpoint == "flows/delete"]
    assert len(flow_deletes) > 1 and {r.status for r in flow_deletes} == {200}
    assert "f/team/every_hour" not in ws.paths("schedule")
    assert ws.get("variable", "f/team/new_var").data["value"] == "hello"
    assert ws.get("group", "devs").data["members"] == ["u/admin"]

    fresh = new_dir(tmp_path)
    assert pull(emulator, fresh, ws.id).code == 0
    local = {k: v for k, v in files_under(d).items() if k != "wmill-lock.yaml"}
    remote = {k: v for k, v in files_under(fresh).items() if k != "wmill-lock.yaml"}
    assert remote.keys() == local.keys()
    # Files written by hand here differ in style, and the server fills in defaults.
    by_hand = {"f/team/db.resource.yaml", "groups/devs.group.yaml", "f/team/new_var.variable.yaml"}
    assert {k: v for k, v in remote.items() if k not in by_hand} == (
        {k: v for k, v in local.items() if k not in by_hand}
    )
    for name in by_hand:
        pulled = read_yaml(fresh / name)
        assert {k: pulled[k] for k in read_yaml(d / name)} == read_yaml(d / name)
    assert read_yaml(fresh / "f/team/new_var.variable.yaml")["account"] is None


def test_write_failure_aborts_the_push(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    target = emulator.workspace(f"empty{next(_ids)}")
    emulator.set_fault("scripts/create", "500", workspace=target.id)
    run = push(emulator, d, target.id)
    assert run.code == 1, run.out
    assert "Script creation for" in run.out and "Internal: injected fault" in run.out
    assert target.paths("folder") == ["ops", "team"]  # pushed before the failure
    assert target.paths("script") == []


def test_get_endpoints_return_full_objects(emulator: WindmillEmulator, ws: Workspace) -> None:
    w = ws.id
    script = get_json(emulator, f"api/w/{w}/scripts/get/p/u/admin/hello_deno")
    assert script["ws_error_handler_muted"] is False
    assert "envs" not in script and "lock" not in script  # nulls are omitted
    assert (
        script["tag"] is None and script["hash"] == ws.get("script", "u/admin/hello_deno").meta.hash
    )
    exported = semantic(ws.export(SERVICE_EXPORT))
    meta = exported["f/ops/health_go.script.json"]
    full = get_json(emulator, f"api/w/{w}/scripts/get/p/f/ops/health_go")
    assert {k: full[k] for k in meta} == meta
    flow = get_json(emulator, f"api/w/{w}/flows/get/f/team/my_flow")
    assert {k: flow[k] for k in exported["f/team/my_flow.flow.json"]} == (
        exported["f/team/my_flow.flow.json"]
    )
    assert flow["edited_by"] == "bob"
    for path, entry in (
        ("resources/get/f/team/db", "f/team/db.resource.json"),
        ("resources/type/get/c_my_db", "c_my_db.resource-type.json"),
        ("folders/get/team", "f/team/folder.meta.json"),
        ("schedules/get/f/team/every_hour", "f/team/every_hour.schedule.json"),
        ("http_triggers/get/f/team/hook", "f/team/hook.http_trigger.json"),
    ):
        obj = get_json(emulator, f"api/w/{w}/{path}")
        assert {k: obj[k] for k in exported[entry]} == exported[entry], path
    cipher = json.loads(
        ws.export(ExportOptions(archive_type="zip"))["f/team/secret_var.variable.json"]
    )["value"]
    var_path = f"api/w/{w}/variables/get/f/team/secret_var"
    assert (
        get_json(emulator, var_path + "?decrypt_secret=false&include_encrypted=true")["value"]
        == cipher
    )
    assert (
        get_json(emulator, var_path + "?decrypt_secret=true&include_encrypted=true")["value"]
        == "s3cr3t-p4ss"
    )
    group = get_json(emulator, f"api/w/{w}/groups/get/devs")
    assert sorted(group["members"]) == ["admin", "bob"]
    assert group["extra_perms"] == {"u/admin": True}
    assert http_get(emulator, f"api/w/{w}/flows/get/f/team/nope")[0] == 404


def test_script_create_contract(emulator: WindmillEmulator, ws: Workspace) -> None:
    url = f"api/w/{ws.id}/scripts/create?skip_if_noop=true"
    body = {
        "path": "f/team/direct",
        "content": "echo 1\n",
        "language": "bash",
        "summary": "",
        "description": "",
        "kind": "script",
        "schema": {},
    }
    status, first = http_send(emulator, "POST", url, body)
    assert status == 201 and re.fullmatch(rb"[0-9a-f]{16}", first)
    status, text = http_send(emulator, "POST", url, body)
    assert status == 400 and text.startswith(b"Bad request: Path conflict")
    status, again = http_send(emulator, "POST", url, {**body, "parent_hash": first.decode()})
    assert (status, again) == (201, first)  # skip_if_noop: nothing changed
    status, second = http_send(
        emulator, "POST", url, {**body, "content": "echo 2\n", "parent_hash": first.decode()}
    )
    assert status == 201 and second != first
    status, _ = http_send(emulator, "POST", f"api/w/{ws.id}/scripts/archive/p/f/team/direct")
    assert status == 200
    assert "f/team/direct.sh" not in ws.export()
    for _ in range(2):  # idempotent deletes
        assert http_send(emulator, "DELETE", f"api/w/{ws.id}/flows/delete/f/team/my_flow")[0] == 200
    assert emulator.write_requests()[-1].body is None


def test_jobs_lists_are_empty(emulator: WindmillEmulator, ws: Workspace) -> None:
    for kind in ("queue", "completed"):
        assert get_json(emulator, f"api/w/{ws.id}/jobs/{kind}/list?job_kinds=dependencies") == []


# --- listings for attribution (phase 3) ---------------------------------------------------


def test_scripts_list_and_history(emulator: WindmillEmulator, ws: Workspace) -> None:
    ws.update(
        "script",
        "f/team/hello_py",
        content="def main():\n    return 2\n",
        edited_by="carol",
        deployment_message="second",
    )
    rows = get_json(emulator, f"api/w/{ws.id}/scripts/list?with_deployment_msg=true")
    by_path = {r["path"]: r for r in rows}
    assert "f/team/retired" not in by_path  # archived
    assert set(by_path) == {p for p in ws.paths("script") if p != "f/team/retired"}
    hello = by_path["f/team/hello_py"]
    assert (hello["created_by"], hello["deployment_msg"]) == ("carol", "second")
    assert hello["hash"] == ws.get("script", "f/team/hello_py").meta.hash
    assert rows[0]["path"] == "f/team/hello_py"  # newest first
    assert by_path["u/admin/hello_deno"]["deployment_msg"] is None
    plain = get_json(emulator, f"api/w/{ws.id}/scripts/list")
    assert "deployment_msg" not in plain[0]
    archived = get_json(emulator, f"api/w/{ws.id}/scripts/list?show_archived=true")
    assert "f/team/retired" in {r["path"] for r in archived}
    paged = get_json(emulator, f"api/w/{ws.id}/scripts/list?per_page=2&page=2")
    assert [r["path"] for r in paged] == [r["path"] for r in plain[2:4]]

    history = get_json(emulator, f"api/w/{ws.id}/scripts/history/p/f/team/hello_py")
    assert [(h["created_by"], h["deployment_msg"]) for h in history] == [
        ("carol", "second"),
        ("bob", "first version"),
    ]
    assert history[0]["script_hash"] == hello["hash"]


def test_flows_and_apps_list_and_history(emulator: WindmillEmulator, ws: Workspace) -> None:
    ws.update(
        "flow", "f/team/my_flow", summary="v2", edited_by="carol", deployment_message="flow v2"
    )
    flows = get_json(emulator, f"api/w/{ws.id}/flows/list?with_deployment_msg=true")
    assert [(f["path"], f["edited_by"], f["deployment_msg"]) for f in flows] == [
        ("f/team/my_flow", "carol", "flow v2")
    ]
    assert "value" not in flows[0] and flows[0]["edited_at"]
    history = get_json(emulator, f"api/w/{ws.id}/flows/history/p/f/team/my_flow")
    assert [(h["created_by"], h["deployment_msg"]) for h in history] == [
        ("carol", "flow v2"),
        ("bob", "flow v1"),
    ]
    assert history[0]["id"] > history[1]["id"]

    apps = get_json(emulator, f"api/w/{ws.id}/apps/list")
    assert [(a["path"], a["execution_mode"]) for a in apps] == [("f/team/my_app", "publisher")]
    app_history = get_json(emulator, f"api/w/{ws.id}/apps/history/p/f/team/my_app")
    assert app_history[0]["version"] == apps[0]["version"]
    assert app_history[0]["created_by"] == "admin"


def test_schedules_and_triggers_list_their_editor_page_by_page(
    emulator: WindmillEmulator, ws: Workspace
) -> None:
    ws.update("schedule", "f/team/every_hour", schedule="0 5 * * * *", edited_by="carol")
    ws.add_schedule("f/team/nightly", schedule="0 0 2 * * *", script_path="f/team/hello_py")
    schedules = get_json(emulator, f"api/w/{ws.id}/schedules/list?per_page=1&page=2")
    assert [(s["path"], s["edited_by"]) for s in schedules] == [("f/team/nightly", "admin")]
    first = get_json(emulator, f"api/w/{ws.id}/schedules/list")[0]
    assert first == get_json(emulator, f"api/w/{ws.id}/schedules/get/f/team/every_hour")
    assert first["edited_by"] == "carol" and "deployment_msg" not in first
    triggers = get_json(emulator, f"api/w/{ws.id}/http_triggers/list")
    assert [(t["path"], t["edited_by"]) for t in triggers] == [("f/team/hook", "admin")]
    assert get_json(emulator, f"api/w/{ws.id}/kafka_triggers/list") == []


def test_push_is_attributed_to_the_token_user(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    d = new_dir(tmp_path)
    assert pull(emulator, d, ws.id).code == 0
    (d / "f/team/hello_py.py").write_text("def main():\n    return 3\n")
    assert push(emulator, d, ws.id, "--message", "via cli").code == 0
    rows = get_json(
        emulator, f"api/w/{ws.id}/scripts/list?with_deployment_msg=true&path_exact=f/team/hello_py"
    )
    assert [(r["created_by"], r["deployment_msg"]) for r in rows] == [("admin", "via cli")]


def test_users_list(emulator: WindmillEmulator, ws: Workspace) -> None:
    users = get_json(emulator, f"api/w/{ws.id}/users/list")
    assert [(u["username"], u["email"], u["name"]) for u in users] == [
        ("admin", "admin@windmill.dev", "Admin"),
        ("bob", "bob@example.com", "Bob"),
        ("carol", "carol@example.com", "Carol"),
    ]
    bob = users[1]
    assert (bob["is_admin"], bob["operator"], bob["groups"]) == (False, False, ["all", "devs"])
    assert users[2]["operator"] is True


def test_workspace_dependencies_are_pulled_at_the_root(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    """`dependencies/` also bypasses `includes` (ignoreF), and needs an admin caller (§4.1)."""
    ws.add_workspace_dependency("python3", "requests==2.32.3\n")
    ws.add_workspace_dependency("bun", '{"dependencies": {}}\n', name="web")
    d = new_dir(tmp_path)
    run = pull(emulator, d, ws.id)
    assert run.code == 0, run.out
    assert (d / "dependencies/requirements.in").read_text() == "requests==2.32.3\n"
    assert (d / "dependencies/web.package.json").exists()
    emulator.workspace("limited").add_workspace_dependency("python3", "x\n")
    names = zipfile.ZipFile(
        io.BytesIO(
            http_get(
                emulator, "api/w/limited/workspaces/tarball?" + tarball_query(), LIMITED_TOKEN
            )[2]
        )
    ).namelist()
    assert names == []  # bob is not an admin of `limited`


def test_push_round_trip_with_users_settings_and_secrets(
    emulator: WindmillEmulator, ws: Workspace, tmp_path: Path
) -> None:
    """Everything included: secrets travel as ciphertext, users and settings are recreated,
    and a second push finds nothing to do."""
    wide = (
        SERVICE_WMILL_YAML.replace("includeUsers: false", "includeUsers: true")
        .replace("includeSettings: false", "includeSettings: true")
        .replace("skipSecrets: true", "skipSecrets: false")
    )
    d = tmp_path / "wide"
    d.mkdir()
    (d / "wmill.yaml").write_text(wide)
    assert pull(emulator, d, ws.id).code == 0
    assert read_yaml(d / "f/team/secret_var.variable.yaml")["value"] != "s3cr3t-p4ss"
    target = emulator.workspace(f"empty{next(_ids)}", name=ws.name)

    run = push(emulator, d, target.id)
    assert run.code == 0, run.out
    assert semantic(target.export()) == semantic(ws.export())
    secret = target.get("variable", "f/team/secret_var").data["value"]
    assert decrypt_secret(ws.encryption_key, secret) == "s3cr3t-p4ss"
    assert target.get("user", "carol").data["role"] == "operator"
    emulator.clear_requests()
    again = push(emulator, d, target.id)
    assert again.code == 0, again.out
    assert "0 changes to apply" in again.out and emulator.write_requests() == []
