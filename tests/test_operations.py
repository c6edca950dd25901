"""Knowing backups are alive: metrics, status page, readiness, logs, alerts, the Windmill kit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, Target, new_target, start_service
from tests.servers.alert_sink import AlertSink
from tests.servers.proc_scan import needles_for
from tests.servers.service_process import REPO_ROOT, WMILL_CLI, ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def watched(
    windmill: WindmillEmulator,
    ca_pem: Path,
    sink: AlertSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    proc = start_service(
        tmp_path_factory.mktemp("watched"),
        windmill,
        ca_pem,
        ALERT_WEBHOOK_URL=sink.url,
        STALE_AFTER_SECONDS="3",
        ALERT_CHECK_INTERVAL="0.3",
        RETRY_ATTEMPTS="2",
        RETRY_WAIT_INITIAL="0.1",
    )
    yield proc
    proc.stop()


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(predicate: Any, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def label(target: Target) -> str:
    host_path = target.remote_url.removeprefix("https://")
    return f"{target.workspace_id}@{host_path}#main"


def test_metrics_follow_successes_noops_errors_and_refusals(
    watched: ServiceProcess, windmill: WindmillEmulator, git_server: Any
) -> None:
    target = new_target(windmill, git_server)
    watched.post("/sync", target.body())
    watched.post("/sync", target.body())
    watched.post("/sync", target.body(git_token="ghp_wrong_token_00000000"))
    target.workspace.clear()
    watched.post("/sync", target.body())

    text = watched.get("/metrics").text
    t = label(target)
    for outcome in ("success", "noop", "error", "refused"):
        assert metric(text, "windmill_git_sync_count_total", outcome=outcome, target=t) == 1.0
    assert metric(text, "windmill_git_sync_items_changed_total", target=t, change="added") > 10
    assert metric(text, "windmill_git_sync_commits_pushed_total", target=t) >= 1
    last = metric(text, "windmill_git_sync_last_success_timestamp_seconds", target=t)
    assert last is not None and abs(last - time.time()) < 600
    assert metric(text, "windmill_git_sync_in_flight") == 0
    assert metric(text, "windmill_git_sync_queue_depth") == 0
    assert metric(text, "windmill_git_sync_duration_seconds_count", outcome="success") >= 1
    assert GIT_TOKEN not in text and "ghp_wrong" not in text


def test_retries_are_counted(
    watched: ServiceProcess, windmill: WindmillEmulator, git_server: Any
) -> None:
    target = new_target(windmill, git_server)
    before = (
        metric(
            watched.get("/metrics").text,
            "windmill_git_sync_retries_total",
            step="the Windmill pull",
        )
        or 0
    )
    windmill.set_fault("tarball", "500", workspace=target.workspace_id)
    try:
        assert watched.post("/sync", target.body()).status_code == 500
    finally:
        windmill.set_fault("tarball", None, workspace=target.workspace_id)
    after = metric(
        watched.get("/metrics").text, "windmill_git_sync_retries_total", step="the Windmill pull"
    )
    assert after == before + 1


def test_failures_and_silence_reach_the_alert_webhook(
    watched: ServiceProcess, windmill: WindmillEmulator, git_server: Any, sink: AlertSink
) -> None:
    target = new_target(windmill, git_server)
    assert watched.post("/sync", target.body()).status_code == 200
    failed = watched.post("/sync", target.body(windmill_token="wm_bad_token_000000000"))
    assert failed.status_code == 500

    wait_for(lambda: any(e["workspace"] == target.workspace_id for e in sink.events("sync_failed")))
    alert = next(e for e in sink.events("sync_failed") if e["workspace"] == target.workspace_id)
    assert "Windmill rejected the token" in alert["message"] and alert["job_id"]
    # Nothing calls the service now: the watchdog notices the silence on its own.
    wait_for(
        lambda: any(e["workspace"] == target.workspace_id for e in sink.events("backup_stale")),
        timeout=30,
    )
    stale = [e for e in sink.events("backup_stale") if e["workspace"] == target.workspace_id]
    assert stale[0]["age_seconds"] >= 3 and "No successful backup" in stale[0]["message"]
    time.sleep(1.5)  # several more checks: still one alert for this silence
    assert (
        len([e for e in sink.events("backup_stale") if e["workspace"] == target.workspace_id]) == 1
    )
    raw = json.dumps(sink.received)
    assert WINDMILL_TOKEN not in raw and GIT_TOKEN not in raw and "wm_bad_token" not in raw


def test_one_json_log_line_per_sync(
    watched: ServiceProcess, windmill: WindmillEmulator, git_server: Any
) -> None:
    target = new_target(windmill, git_server)
    job_id = watched.post("/sync", target.body()).json()["job_id"]
    lines = [
        json.loads(line)
        for line in watched.log_text().splitlines()
        if line.startswith("{") and job_id in line
    ]
    events = [line for line in lines if line.get("event") == "sync"]
    assert len(events) == 1
    event = events[0]
    assert event["outcome"] == "success" and event["target"] == label(target)
    assert event["commit"] and event["added"] > 0 and event["duration_seconds"] > 0


def test_status_page_shows_every_target_and_nothing_secret(
    watched: ServiceProcess, windmill: WindmillEmulator, git_server: Any, tmp_path: Path
) -> None:
    ok, broken = new_target(windmill, git_server), new_target(windmill, git_server)
    watched.post("/sync", ok.body())
    watched.post("/sync", broken.body())
    watched.post("/sync", broken.body(git_token="ghp_expired_11111111111"))

    page = watched.get("/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    for t in (ok, broken):
        assert f'data-target="{t.workspace_id}"' in html
        assert t.remote_url in html
    assert "authentication error" in html  # the broken target's last error, in words
    needles = [
        n
        for tok in (WINDMILL_TOKEN, GIT_TOKEN, "ghp_expired_11111111111")
        for n in needles_for(tok)
    ]
    assert not [n for n in needles if n in html.encode()]
    assert "<script" not in html and "http://" not in html.split("</style>")[0]

    assert os.path.exists(CHROMIUM), "Debian's chromium package is installed by make test"
    shot = tmp_path / "status.png"
    dom = headless_chromium(
        tmp_path / "profile", "--window-size=480,900", f"--screenshot={shot}", watched.url + "/"
    )
    assert shot.exists(), dom.stderr[-2000:]
    width, height, colours = png_facts(shot.read_bytes())
    assert (width, height) == (480, 900)
    assert colours > 20, "the screenshot is blank"
    rendered = headless_chromium(tmp_path / "profile2", "--dump-dom", watched.url + "/")
    assert rendered.stdout.count('class="target') >= 2


def headless_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The flags keep Chromium off the network it would otherwise try to reach.
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(profile.parent)},
    )


def png_facts(data: bytes) -> tuple[int, int, int]:
    """Width, height and how many distinct byte values the pixels hold."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


def test_status_page_obeys_inbound_authentication(
    windmill: WindmillEmulator, ca_pem: Path, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text("status-page-token-1234567890")
    proc = start_service(tmp_path, windmill, SYNC_AUTH_TOKEN_FILE=str(tmp_path / "token"))
    try:
        assert proc.get("/").status_code == 401
        assert proc.get("/metrics").status_code == 401
        assert proc.get("/ready").status_code == 200
        headers = {"Authorization": "Bearer status-page-token-1234567890"}
        assert proc.get("/", headers=headers).status_code == 200
    finally:
        proc.stop()


def test_ready_reports_a_missing_cli(windmill: WindmillEmulator, tmp_path: Path) -> None:
    proc = start_service(tmp_path, windmill, WMILL_CLI=str(tmp_path / "missing.js"))
    try:
        assert proc.get("/health").status_code == 200
        not_ready = proc.get("/ready")
        assert not_ready.status_code == 503
        assert any("wmill CLI was not found" in p for p in not_ready.json()["problems"])
    finally:
        proc.stop()


def test_ready_when_everything_is_there(service: ServiceProcess) -> None:
    assert service.get("/ready").json() == {
        "status": "ready",
        "owed_runs": [],
        # Windmill's version beside the pinned CLI's (tests/test_coverage.py: far apart).
        "windmill": {"server_version": "1.819.0", "cli_version": "1.819.0"},
        # No MAX_FILE_BYTES set: the limit is off, and /ready says so.
        "limits": {"max_file_bytes": {"configured": None, "enforced": False}},
    }


def test_the_windmill_kit_loads_with_the_real_cli(
    windmill: WindmillEmulator, tmp_path: Path
) -> None:
    kit = tmp_path / "kit"
    shutil.copytree(REPO_ROOT / "examples" / "windmill", kit)
    workspace = windmill.workspace("kit-install")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "WM_TOKEN": WINDMILL_TOKEN,
        "WMILL_CONFIG_DIR": str(tmp_path / "cfg"),
        "WM_WORKSPACE": workspace.id,
        "BASE_INTERNAL_URL": windmill.base_url,
    }
    pushed = subprocess.run(
        ["node", str(WMILL_CLI), "sync", "push", "--yes"],
        cwd=kit,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert workspace.paths("script") == ["f/git_sync/backup_to_git"]
    assert workspace.paths("resource_type") == ["c_windmill_git_sync"]
    assert workspace.paths("resource") == ["f/git_sync/backup_settings"]
    schedule = workspace.get("schedule", "f/git_sync/backup_schedule").data
    assert schedule["script_path"] == "f/git_sync/backup_to_git"
    assert schedule["schedule"] == "0 */5 * * * *"  # docs/performance.md: what it costs a day
    assert schedule["enabled"] is False  # the user turns it on after editing the settings
    script = workspace.get("script", "f/git_sync/backup_to_git").data["content"]
    assert "throw new Error" in script and "/sync" in script


def restarted(proc: ServiceProcess, run: int, **env: str) -> ServiceProcess:
    """Stops ``proc`` and starts a new service process on the same DATA_DIR, as an upgrade does."""
    proc.stop()
    again = ServiceProcess(
        data_dir=proc.data_dir,
        log_path=proc.log_path.with_name(f"service-run{run}.log"),
        env={**proc.extra_env, **env},
    )
    return again.start()


def per_target_gauges(text: str, target: Target) -> dict[str, float | None]:
    t = label(target)
    gauges: dict[str, float | None] = {
        "last_success": metric(text, "windmill_git_sync_last_success_timestamp_seconds", target=t),
        "last_attempt": metric(text, "windmill_git_sync_last_attempt_timestamp_seconds", target=t),
    }
    for outcome in ("success", "noop", "error", "refused"):
        gauges[outcome] = metric(text, "windmill_git_sync_last_outcome", target=t, outcome=outcome)
    return gauges


def stale_alerts(sink: AlertSink, target: Target) -> list[dict[str, Any]]:
    return [e for e in sink.events("backup_stale") if e["workspace"] == target.workspace_id]


def test_metrics_and_the_staleness_alert_survive_restarts(
    windmill: WindmillEmulator, git_server: Any, ca_pem: Path, sink: AlertSink, tmp_path: Path
) -> None:
    ok, flaky, broken = (new_target(windmill, git_server) for _ in range(3))
    first = start_service(
        tmp_path,
        windmill,
        ca_pem,
        ALERT_WEBHOOK_URL=sink.url,
        STALE_AFTER_SECONDS="4",
        ALERT_CHECK_INTERVAL="3600",  # no check before the restart: the silence spans it
        JOB_HISTORY="2",  # the successes are pruned from the jobs before the restart
        RETRY_ATTEMPTS="1",
    )
    try:
        assert first.post("/sync", ok.body()).status_code == 200
        assert first.post("/sync", flaky.body()).status_code == 200
        for failing in (flaky, broken):
            answer = first.post("/sync", failing.body(git_token="ghp_revoked_000000000"))
            assert answer.status_code >= 400
        text = first.get("/metrics").text
        before = {t.workspace_id: per_target_gauges(text, t) for t in (ok, flaky, broken)}
        assert len(first.get("/jobs").json()["jobs"]) == 2
        second = restarted(first, 2, ALERT_CHECK_INTERVAL="0.3")
    finally:
        first.stop()
    try:
        # Before any sync: every per-target series is back, with the same values.
        text = second.get("/metrics").text
        for t in (ok, flaky, broken):
            assert per_target_gauges(text, t) == before[t.workspace_id]
        assert per_target_gauges(text, ok)["success"] == 1.0
        assert per_target_gauges(text, flaky)["error"] == 1.0
        assert per_target_gauges(text, flaky)["last_success"] is not None
        # Only failures: no last success, but the last attempt is there to alert on.
        assert per_target_gauges(text, broken)["last_success"] is None
        assert per_target_gauges(text, broken)["last_attempt"] is not None
        assert per_target_gauges(text, broken)["error"] == 1.0
        # The silences began before the restart and were never reported: report them once.
        wait_for(lambda: stale_alerts(sink, ok) and stale_alerts(sink, flaky))
        time.sleep(1.5)  # several more checks
        assert [len(stale_alerts(sink, t)) for t in (ok, flaky, broken)] == [1, 1, 0]
        ages = stale_alerts(sink, ok)[0]["age_seconds"], stale_alerts(sink, flaky)[0]["age_seconds"]
        assert min(ages) >= 4

        third = restarted(second, 3)
    finally:
        second.stop()
    try:
        text = third.get("/metrics").text
        for t in (ok, flaky, broken):
            assert per_target_gauges(text, t) == before[t.workspace_id]
        time.sleep(2)  # several checks of the restarted watchdog
        # The history remembers these silences were reported.
        assert [len(stale_alerts(sink, t)) for t in (ok, flaky, broken)] == [1, 1, 0]
        # A new success ends the silence; the gauge moves on from the restored value.
        assert third.post("/sync", ok.body()).status_code == 200
        last = per_target_gauges(third.get("/metrics").text, ok)["last_success"]
        assert last is not None and last > (before[ok.workspace_id]["last_success"] or 0)
    finally:
        third.stop()


def test_a_job_history_from_before_the_summary_upgrades_in_place(
    windmill: WindmillEmulator, git_server: Any, ca_pem: Path, sink: AlertSink, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    first = start_service(
        tmp_path, windmill, ca_pem, ALERT_WEBHOOK_URL=sink.url, STALE_AFTER_SECONDS="4"
    )
    try:
        assert first.post("/sync", target.body()).status_code == 200
        synced = per_target_gauges(first.get("/metrics").text, target)["last_success"]
    finally:
        first.stop()
    # What the previous release left: the jobs alone.
    with contextlib.closing(sqlite3.connect(first.data_dir / "jobs.sqlite3")) as db:
        db.execute("DROP TABLE target_summary")
        db.commit()

    second = restarted(first, 2, ALERT_CHECK_INTERVAL="0.3")
    try:
        gauges = per_target_gauges(second.get("/metrics").text, target)
        assert gauges["last_success"] is not None and synced is not None
        assert abs(gauges["last_success"] - synced) < 5  # the job's finish, not the restart
        assert gauges["last_attempt"] == gauges["last_success"] and gauges["success"] == 1.0
        wait_for(lambda: stale_alerts(sink, target))
        time.sleep(1)
        assert len(stale_alerts(sink, target)) == 1
    finally:
        second.stop()
