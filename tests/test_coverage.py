"""What the backup leaves out, and which Windmill it backed up: said in every answer and to watchers.

A Windmill emulator of these tests' own serves archive entries of kinds the
pinned CLI does not know (an s3 trigger, a dashboard), as a newer server
does, and answers /api/version as told.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitsync.windmill import coverage, version
from gitsync.windmill.wmill import Scope
from tests.conftest import (
    WINDMILL_TOKEN,
    Target,
    files_under,
    new_target,
    plain_pull,
    start_service,
)
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator
from tests.test_operations import AlertSink, label, metric, restarted, wait_for

S3_TRIGGER = "f/team/on_upload.s3_trigger.json"
DASHBOARD = "f/team/weekly_report.dashboard.json"
UNKNOWN = [
    {"kind": "dashboard", "path": "f/team/weekly_report"},
    {"kind": "s3_trigger", "path": "f/team/on_upload"},
]
GAUGE = "windmill_git_sync_not_backed_up_items"


@pytest.fixture(scope="module")
def emulator() -> Iterator[WindmillEmulator]:
    with WindmillEmulator() as em:
        em.add_token(WINDMILL_TOKEN)
        yield em


@pytest.fixture(scope="module")
def sink() -> Iterator[AlertSink]:
    s = AlertSink()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture(scope="module")
def watched(
    emulator: WindmillEmulator,
    ca_pem: Path,
    sink: AlertSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    proc = start_service(
        tmp_path_factory.mktemp("coverage"), emulator, ca_pem, ALERT_WEBHOOK_URL=sink.url
    )
    yield proc
    proc.stop()


def add_unknown_kinds(target: Target) -> None:
    target.workspace.add_entry(
        S3_TRIGGER,
        {
            "script_path": "f/team/hello_py",
            "is_flow": False,
            "bucket": "uploads",
            "mode": "enabled",
        },
        only_with="include_triggers",
    )
    target.workspace.add_entry(DASHBOARD, {"summary": "Weekly report", "value": {"widgets": []}})


def gaps(answer: dict[str, Any]) -> list[dict[str, str]]:
    return [{"kind": g["kind"], "path": g["path"]} for g in answer["not_backed_up"]]


def section(html: str, target: Target) -> str:
    start = html.index(f'data-target="{target.workspace_id}"')
    return html[start : html.index("</section>", start)]


def gauge(service: ServiceProcess, target: Target) -> float | None:
    return metric(service.get("/metrics").text, GAUGE, target=label(target))


def incomplete_alerts(sink: AlertSink, target: Target) -> list[dict[str, Any]]:
    return [e for e in sink.events("backup_incomplete") if e["workspace"] == target.workspace_id]


def test_a_complete_workspace_answers_nothing_left_out(
    watched: ServiceProcess, emulator: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(emulator, git_server)

    answer = watched.post("/sync", target.body()).json()

    assert answer["success"] is True and answer["changed"] is True
    assert answer["not_backed_up"] == []
    # Not gaps: what the default scope does not ask for is said as such.
    assert answer["scope_excludes"] == ["users", "settings", "secret variables"]
    assert answer["skipped_by_policy"] == []
    assert answer["coverage"]["exported"] == answer["coverage"]["backed_up"] > 10
    assert answer["windmill"] == {"server_version": "1.819.0", "cli_version": "1.819.0"}
    assert gauge(watched, target) == 0
    assert "complete:" in section(watched.get("/").text, target)
    assert watched.get(f"/jobs/{answer['job_id']}").json()["not_backed_up"] == []


def test_items_of_kinds_the_cli_does_not_know_are_named_until_they_are_gone(
    watched: ServiceProcess,
    emulator: WindmillEmulator,
    git_server: GitHttpServer,
    sink: AlertSink,
    tmp_path: Path,
) -> None:
    target = new_target(emulator, git_server)
    add_unknown_kinds(target)

    answer = watched.post("/sync", target.body()).json()

    assert answer["success"] is True and gaps(answer) == UNKNOWN
    assert all("unknown kind" in g["reason"] for g in answer["not_backed_up"])
    # Everything else is backed up exactly as the CLI writes it.
    expected = tmp_path / "plain"
    plain_pull(emulator, target.workspace_id, expected, Scope().wmill_yaml())
    tree = target.tree()
    tree.pop("README.md")
    assert tree == files_under(expected)
    assert not [p for p in tree if "on_upload" in p or "weekly_report" in p]
    # The job record, the metric, the status page.
    record = watched.get(f"/jobs/{answer['job_id']}").json()
    assert gaps(record) == UNKNOWN
    assert gauge(watched, target) == 2
    shown = section(watched.get("/").text, target)
    assert "Not backed up" in shown and "2 items" in shown
    assert "f/team/on_upload" in shown and "f/team/weekly_report" in shown
    # One alert for the gap that appeared.
    wait_for(lambda: incomplete_alerts(sink, target))
    alert = incomplete_alerts(sink, target)[0]
    assert "f/team/on_upload" in alert["message"] and "upgrade the image" in alert["message"]
    assert [{"kind": g["kind"], "path": g["path"]} for g in alert["not_backed_up"]] == UNKNOWN

    # Nothing new: the CLI is not started, and the answer still says what is left out.
    again = watched.post("/sync", target.body()).json()
    assert again["pull"] == "skipped" and again["changed"] is False
    assert gaps(again) == UNKNOWN
    assert gauge(watched, target) == 2
    assert len(incomplete_alerts(sink, target)) == 1  # once, not on every sync

    # Gone from Windmill: the gap closes, and the gauge says so.
    target.workspace.remove_entry(S3_TRIGGER)
    target.workspace.remove_entry(DASHBOARD)
    closed = watched.post("/sync", target.body()).json()
    assert closed["pull"] == "ran" and closed["not_backed_up"] == []
    assert closed["changed"] is False  # the export held neither: nothing to commit
    assert gauge(watched, target) == 0
    shown = section(watched.get("/").text, target)
    assert "Not backed up" not in shown and "f/team/on_upload" not in shown

    # A gap that opens again is news again.
    target.workspace.add_entry(DASHBOARD, {"summary": "Weekly report", "value": {}})
    reopened = watched.post("/sync", target.body()).json()
    assert gaps(reopened) == [{"kind": "dashboard", "path": "f/team/weekly_report"}]
    wait_for(lambda: len(incomplete_alerts(sink, target)) == 2)
    assert incomplete_alerts(sink, target)[1]["new"] == ["dashboard f/team/weekly_report"]


def test_the_last_coverage_survives_a_restart(
    emulator: WindmillEmulator, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(emulator, git_server)
    add_unknown_kinds(target)
    first = start_service(tmp_path, emulator, ca_pem)
    try:
        assert gaps(first.post("/sync", target.body()).json()) == UNKNOWN
        second = restarted(first, 2)
    finally:
        first.stop()
    try:
        # Before any sync: the gauge and the page still name the gap.
        assert gauge(second, target) == 2
        shown = section(second.get("/").text, target)
        assert "f/team/on_upload" in shown and "f/team/weekly_report" in shown
    finally:
        second.stop()


def test_a_windmill_far_ahead_of_the_cli_is_stated_with_both_versions(
    git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    with WindmillEmulator() as newer:
        newer.add_token(WINDMILL_TOKEN)
        newer.version_text = "EE v1.950.0"
        target = new_target(newer, git_server)
        proc = start_service(tmp_path, newer, ca_pem)
        try:
            answer = proc.post("/sync", target.body()).json()
            ready = proc.get("/ready").json()
            page = proc.get("/").text
        finally:
            proc.stop()
    stated = answer["windmill"]
    assert (stated["server_version"], stated["cli_version"]) == ("1.950.0", "1.819.0")
    assert "131 minor releases ahead" in stated["warning"]
    assert "upgrade the image" in stated["warning"]
    assert ready["status"] == "ready" and ready["windmill"] == stated
    assert "Windmill 1.950.0" in page and "wmill CLI 1.819.0" in page
    assert "131 minor releases ahead" in page


def test_the_warning_threshold_is_the_configured_number_of_minor_releases() -> None:
    assert version.compare("CE v1.839.0", 20).warning is None
    assert "21 minor releases" in (version.compare("CE v1.840.0", 20).warning or "")
    assert version.compare("CE v1.950.0", 200).warning is None
    assert "a major release" in (version.compare("v2.0.0", 200).warning or "")
    # An older server, or one that does not say, is no cause for a warning.
    assert version.compare("CE v1.700.3", 20) == version.Versions("1.700.3")
    assert version.compare("garbage", 20) == version.Versions(None)


def test_scope_policy_and_held_items_are_not_gaps() -> None:
    archive = [
        "f/team/folder.meta.json",
        "f/team/hello_py.py",
        "f/team/hello_py.script.json",
        "f/team/secret_var.variable.json",
        "f/team/leaky.variable.json",
        "u/admin/board.dashboard.json",
        "f/team/hook.kafka_trigger.json",
    ]
    export = [
        "wmill.yaml",
        "f/team/folder.meta.yaml",
        "f/team/hello_py.py",
        "f/team/hello_py.script.yaml",
        "f/team/leaky.variable.yaml",
        "f/team/hook.kafka_trigger.yaml",
    ]
    found = coverage.compare(
        archive,
        export,
        Scope(includes=("f/**",)),
        skipped_by_policy={"f/team/secret_var"},
        held=["f/team/leaky.variable.yaml"],
    )
    # u/admin/board is outside the includes; the secret is the policy's; the held one is held.
    assert found.not_backed_up == ()
    assert [i.path for i in found.skipped_by_policy] == ["f/team/secret_var"]
    assert [(i.kind, i.path) for i in found.held] == [("variable", "f/team/leaky")]
    assert (found.exported, found.backed_up) == (5, 3)
    # The same archive with the whole workspace asked for: the dashboard is a gap.
    everything = coverage.compare(archive, export, Scope(includes=("**",)))
    assert [(g.kind, g.path) for g in everything.not_backed_up] == [
        ("dashboard", "u/admin/board"),
        ("variable", "f/team/secret_var"),
    ]
    assert re.search("unknown kind", everything.not_backed_up[0].reason)
    assert not re.search("unknown kind", everything.not_backed_up[1].reason)


def test_every_workspace_in_one_request_names_each_gap_by_workspace(
    watched: ServiceProcess, emulator: WindmillEmulator, git_server: GitHttpServer
) -> None:
    token = "wm_two_workspaces_token_5151515151"
    a, b = new_target(emulator, git_server), new_target(emulator, git_server)
    b.workspace.add_entry(DASHBOARD, {"summary": "Weekly report", "value": {}})
    emulator.add_token(token, workspaces={a.workspace_id, b.workspace_id})
    try:
        answer = watched.post(
            "/sync", a.body(windmill_token=token, workspace="*", path_prefix="all")
        ).json()
    finally:
        emulator.remove_token(token)

    assert answer["success"] is True
    assert gaps(answer) == [{"kind": "dashboard", "path": f"{b.workspace_id}:f/team/weekly_report"}]
    each = {r["workspace"]: gaps(r) for r in answer["workspaces"]}
    assert each == {
        a.workspace_id: [],
        b.workspace_id: [{"kind": "dashboard", "path": "f/team/weekly_report"}],
    }


@settings(max_examples=2000, deadline=None)
@given(
    st.text(alphabet="ab./_-Z9é\n", max_size=16),
    st.sampled_from(["", ".json", ".yaml", ".yml", "json", ".json\n"]),
)
def test_typed_names_split_as_the_pattern_splits_them(stem: str, end: str) -> None:
    """The hand-written split of ``<path>.<kind>.<ext>`` agrees with the regex it replaces."""
    from gitsync.windmill.coverage import _TYPED, _typed

    name = stem + end
    match = _TYPED.match(name)
    assert _typed(name) == ((match["path"], match["kind"], match["ext"]) if match else None)
