"""A sync with nothing new does not start the CLI, and never misses a change (#16).

Each test first proves a sync *could* be skipped (the second of two syncs
answers ``"pull": "skipped"``), then changes one thing the CLI's output
depends on and checks that the next sync runs the CLI and backs the change
up. Whether the CLI ran is seen from outside: the node processes that run in
the service's data directory, and the emulator's request log (the CLI's
requests carry ``user-agent: node``; the service's skip check does not).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gitsync.backup.skip import INDEX_FILE, RECORD_FILE
from tests.conftest import WINDMILL_TOKEN, Target, start_service
from tests.servers.service_process import WMILL_CLI, ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator, Workspace


def node_processes_under(directory: Path) -> set[int]:
    """Live node processes whose working directory is ``directory`` or below it."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{entry}/cwd"))
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm == "node" and (cwd == directory or directory in cwd.parents):
            found.add(int(entry))
    return found


@contextmanager
def watching_node(directory: Path) -> Iterator[set[int]]:
    """Every node process seen under ``directory`` while the block runs (sampled often)."""
    seen: set[int] = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(node_processes_under(directory))
            stop.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)


def sync(service: ServiceProcess, target: Target, **overrides: Any) -> dict[str, Any]:
    response = service.post("/sync", target.body(**overrides))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def skippable(service: ServiceProcess, target: Target, **overrides: Any) -> dict[str, Any]:
    """Two syncs; the second must be the skipped one. Returns its answer."""
    sync(service, target, **overrides)
    data = sync(service, target, **overrides)
    assert data["pull"] == "skipped", data
    assert data["changed"] is False
    assert data["commit"] == target.log()[0]
    return data


def cli_requests(windmill: WindmillEmulator, workspace: str, since: int) -> list[Any]:
    return [
        r for r in windmill.requests[since:] if r.workspace == workspace and r.user_agent == "node"
    ]


def test_nothing_new_is_answered_without_starting_the_cli(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator
) -> None:
    before = len(windmill.requests)
    with watching_node(service.data_dir) as seen_first:
        first = sync(service, target)
    assert first["pull"] == "ran" and first["pull_reason"] == "first sync"
    assert first["changed"] is True
    # The watcher sees a real pull, and the CLI's requests reach Windmill through the service.
    assert seen_first, "the watcher should have seen the first sync's node process"
    assert cli_requests(windmill, target.workspace_id, before)

    before = len(windmill.requests)
    with watching_node(service.data_dir) as seen:
        second = sync(service, target)

    assert second["pull"] == "skipped" and "pull_reason" not in second
    assert second["changed"] is False
    assert second["commit"] == first["commit"] == target.log()[0]
    assert not seen, "a skipped sync must start no node process"
    assert not cli_requests(windmill, target.workspace_id, before)
    # The service asked Windmill itself, once per request the CLI made, archive included.
    asked = [r for r in windmill.requests[before:] if r.workspace == target.workspace_id]
    assert [r.endpoint for r in asked].count("tarball") == 1
    job = service.get(f"/jobs/{second['job_id']}").json()
    assert job["pull"] == "skipped" and job["state"] == "succeeded"
    first_job = service.get(f"/jobs/{first['job_id']}").json()
    assert first_job["pull"] == "ran" and first_job["pull_reason"] == "first sync"


def _first(ws: Workspace, kind: str, accept: Callable[[str], bool] = lambda p: True) -> str:
    return next(p for p in ws.paths(kind) if p.startswith("f/") and accept(p))


def _not_secret(ws: Workspace) -> Callable[[str], bool]:
    return lambda p: not ws.get("variable", p).data.get("is_secret")


CHANGES: dict[str, tuple[dict[str, Any], Callable[[Workspace], None]]] = {
    "script-content": (
        {},
        lambda ws: ws.update(
            "script", _first(ws, "script"), content="def main():\n    return 'changed'\n"
        ),
    ),
    "script-metadata": (
        {},
        lambda ws: ws.update("script", _first(ws, "script"), summary="A new summary"),
    ),
    "lock": (
        {},
        lambda ws: ws.update("script", _first(ws, "script"), lock="# py: 3.12\nrequests==2.32.0"),
    ),
    "flow": ({}, lambda ws: ws.update("flow", _first(ws, "flow"), summary="Flow, renamed")),
    "app": ({}, lambda ws: ws.update("app", _first(ws, "app"), summary="App, renamed")),
    "resource": (
        {},
        lambda ws: ws.update("resource", _first(ws, "resource"), description="moved hosts"),
    ),
    "variable": (
        {},
        lambda ws: ws.update("variable", _first(ws, "variable", _not_secret(ws)), value="v2"),
    ),
    "deletion": ({}, lambda ws: ws.delete("flow", _first(ws, "flow"))),
    "new-folder": ({}, lambda ws: ws.add_folder("brand_new_folder", summary="new")),
    "schedule": (
        {},
        lambda ws: ws.update("schedule", _first(ws, "schedule"), schedule="0 */7 * * * *"),
    ),
    "trigger": ({}, lambda ws: ws.add_trigger("f/team/new_route", "http", route_path="new")),
    "group": ({}, lambda ws: ws.add_group("night_shift", members=["admin"])),
    "users": ({"include_users": True}, lambda ws: ws.add_user("newcomer")),
    "settings": ({"include_settings": True}, lambda ws: ws.set_settings({"color": "#a1b2c3"})),
}


@pytest.mark.parametrize("kind", list(CHANGES))
def test_each_kind_of_change_is_picked_up_after_a_skippable_sync(
    service: ServiceProcess, target: Target, windmill: WindmillEmulator, kind: str
) -> None:
    options, change = CHANGES[kind]
    skipped = skippable(service, target, **options)
    change(target.workspace)
    before = len(windmill.requests)

    data = sync(service, target, **options)

    assert data["pull"] == "ran"
    assert data["pull_reason"].startswith("windmill content changed: "), data["pull_reason"]
    assert "workspaces/tarball" in data["pull_reason"]
    assert data["changed"] is True and data["files"], data
    assert target.log()[0] == data["commit"] != skipped["commit"]
    # The CLI was served the very answers the check compared: it asked Windmill nothing.
    assert not cli_requests(windmill, target.workspace_id, before)
    # And the change is now the recorded state: the next sync is skipped again.
    assert sync(service, target, **options)["pull"] == "skipped"


def test_a_change_of_scope_in_the_request_runs_the_cli(
    service: ServiceProcess, target: Target
) -> None:
    skippable(service, target)

    data = sync(service, target, include_schedules=False)

    assert data["pull"] == "ran" and data["pull_reason"] == "scope changed"
    assert sync(service, target, include_schedules=False)["pull"] == "skipped"
    assert sync(service, target)["pull_reason"] == "scope changed"


def test_a_commit_someone_pushed_runs_the_cli_and_is_kept(
    service: ServiceProcess, target: Target
) -> None:
    skippable(service, target)
    theirs = target.git_server.clone_and_commit(
        target.repo, {"NOTES.md": b"kept by a human\n"}, "Add notes"
    )

    data = sync(service, target)

    assert data["pull"] == "ran" and data["pull_reason"] == "remote tip moved"
    assert data["commit"] == theirs == target.log()[0]
    assert target.tree()["NOTES.md"] == b"kept by a human\n"
    assert sync(service, target)["pull"] == "skipped"


def _export_dir(service: ServiceProcess, target: Target) -> Path:
    for record in service.data_dir.rglob(RECORD_FILE):
        if f'"workspace": "{target.workspace_id}"' in (record.parent / "target.json").read_text():
            return record.parent / "export"
    raise AssertionError("no pull record for the target")


@pytest.mark.parametrize("damage", ["edited", "same-size-same-mtime", "file-deleted", "deleted"])
def test_a_damaged_or_deleted_export_directory_runs_the_cli(
    service: ServiceProcess, target: Target, damage: str
) -> None:
    skippable(service, target)
    export = _export_dir(service, target)
    script = next(p for p in sorted(export.rglob("*.py")) if "/f/" in p.as_posix())
    original = script.read_bytes()
    if damage == "edited":
        script.write_bytes(original + b"# damaged\n")
    elif damage == "same-size-same-mtime":
        # The file index knows the file by its stat (git/file_index.py): once
        # it is trusted, an edit that keeps its size and puts its mtime back
        # must still be seen.
        time.sleep(1.1)
        assert sync(service, target)["pull"] == "skipped"
        index = (export.parent / INDEX_FILE).read_text()
        assert script.relative_to(export).as_posix() in index
        before = script.stat()
        script.write_bytes(bytes(b ^ 0x20 if 97 <= b <= 122 else b for b in original))
        os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert script.stat().st_size == before.st_size
        assert script.stat().st_mtime_ns == before.st_mtime_ns
    elif damage == "file-deleted":
        script.unlink()
    else:
        shutil.rmtree(export)

    data = sync(service, target)

    assert data["pull"] == "ran" and data["pull_reason"] == "export directory changed"
    assert data["changed"] is False  # the backup was right; the pull repaired the directory
    assert script.read_bytes() == original
    assert sync(service, target)["pull"] == "skipped"


def test_a_wrong_windmill_token_on_a_skippable_sync_still_fails(
    service: ServiceProcess, target: Target
) -> None:
    skipped = skippable(service, target)

    response = service.post("/sync", target.body(windmill_token="wm_tok_not_a_valid_token_0000"))

    assert response.status_code != 200, response.text
    assert response.json()["error"] == "windmill_auth_failed"
    assert target.log()[0] == skipped["commit"]
    # The failure proves nothing about the content: the next good sync checks again.
    assert sync(service, target)["pull"] in ("ran", "skipped")


def test_the_record_holds_no_token_and_is_private(service: ServiceProcess, target: Target) -> None:
    skippable(service, target)
    record = _export_dir(service, target).parent / RECORD_FILE

    text = record.read_text()
    assert WINDMILL_TOKEN not in text and "Bearer" not in text
    assert record.stat().st_mode & 0o077 == 0
    # The file index beside it: paths, stats and blob ids, no content.
    index = record.parent / INDEX_FILE
    assert index.stat().st_mode & 0o077 == 0
    assert WINDMILL_TOKEN not in index.read_text() and "def main" not in index.read_text()


def test_another_cli_version_runs_the_cli(
    windmill: WindmillEmulator, target: Target, ca_pem: Path, tmp_path: Path
) -> None:
    first = start_service(tmp_path / "svc", windmill, ca_pem)
    try:
        skippable(first, target)
    finally:
        first.stop()
    data_dir = first.data_dir
    # Another build of the CLI: the same program with one more byte.
    other = tmp_path / "cli" / "main.js"
    other.parent.mkdir()
    other.write_bytes(WMILL_CLI.read_bytes() + b"\n// another build\n")
    # The same DATA_DIR, so the same records; a log of its own.
    second = ServiceProcess(
        data_dir=data_dir,
        log_path=tmp_path / "second.log",
        env={
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": str(ca_pem),
            "WMILL_CLI": str(other),
        },
    ).start()
    try:
        data = sync(second, target)
        assert data["pull"] == "ran" and data["pull_reason"] == "cli version changed"
        assert data["changed"] is False
        assert sync(second, target)["pull"] == "skipped"
    finally:
        second.stop()


def test_the_record_from_a_syncs_own_walk_is_the_one_a_new_walk_gives(tmp_path: Path) -> None:
    """The export's digest for the next skip check comes from step 2's walk, not a walk of its own."""
    from gitsync.backup.skip import export_state
    from gitsync.git.file_index import FileIndex
    from gitsync.windmill.mirror import snapshot_export

    export = tmp_path / "export"
    for rel, text in {
        "wmill.yaml": "defaultTs: bun\n",
        "f/team/etl.py": "def main(): pass\n",
        "f/team/etl.script.yaml": "summary: etl\n",
        "f/team/flow.flow/flow.yaml": "summary: f\n",
        "f/team/empty.flow/.keep/x.ts": "1\n",
        "users/alice.user.yaml": "email: a\n",
    }.items():
        (export / rel).parent.mkdir(parents=True, exist_ok=True)
        (export / rel).write_text(text)
    (export / "f" / "empty_dir").mkdir()
    index = FileIndex()
    walked = export_state(export, index)
    assert export_state(export, index, snapshot_export(export)) == walked
    assert export_state(export, FileIndex(), snapshot_export(export)) == walked
    (export / "f/team/etl.py").write_text("def main(): return 1\n")
    assert export_state(export, index, snapshot_export(export))[0] != walked[0]
