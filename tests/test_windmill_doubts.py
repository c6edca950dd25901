"""Any doubt about Windmill's answers runs the CLI; a refused token is found with one request.

A truncated answer or a status line no client can parse is no ``OSError``:
the skip check must still fall back to the CLI, and the pass-through must
give the CLI a clean 502 and say so in the log, never print a traceback
outside it. A token Windmill refuses is found by the skip check's first
refused request: no more requests, no CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Target, new_target
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator
from tests.test_skip_pull import skippable, watching_node

BAD_TOKEN = "wm_tok_refused_000000000000"


@pytest.fixture(scope="module")
def watched(
    windmill: WindmillEmulator, ca_pem: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A service whose stderr is kept apart from its log, with quick retries."""
    root = tmp_path_factory.mktemp("doubts")
    proc = ServiceProcess(
        data_dir=root / "data",
        log_path=root / "service.log",
        stderr_path=root / "stderr.txt",
        env={
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": str(ca_pem),
            "RETRY_ATTEMPTS": "3",
            "RETRY_WAIT_INITIAL": "0.2",
            "RETRY_MAX_SECONDS": "30",
        },
    ).start()
    yield proc
    proc.stop()


def _cli_tarball_requests(windmill: WindmillEmulator, workspace: str) -> list[int]:
    return [
        r.status
        for r in windmill.requests
        if r.workspace == workspace and r.endpoint == "tarball" and r.user_agent == "node"
    ]


@pytest.mark.parametrize("fault", ["truncated", "badstatus"])
def test_a_broken_answer_during_the_skip_check_runs_the_cli(
    watched: ServiceProcess, target: Target, windmill: WindmillEmulator, fault: str
) -> None:
    skippable(watched, target)
    target.workspace.add_script("f/team/after_doubt", language="bash", content="echo 1\n")
    windmill.clear_requests()
    # The next tarball request only: the skip check's. The CLI's is answered well.
    windmill.set_fault("tarball", fault, workspace=target.workspace_id, times=1)

    response = watched.post("/sync", target.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert data["pull"] == "ran"
    assert data["pull_reason"] == "windmill answer unreadable during the skip check"
    assert _cli_tarball_requests(windmill, target.workspace_id) == [200]
    assert data["commit"] == target.log()[0]
    assert "f/team/after_doubt.sh" in target.tree()
    assert "Traceback" not in watched.stderr_text()


@pytest.mark.parametrize("fault", ["truncated", "badstatus"])
def test_a_broken_answer_to_the_cli_is_a_clean_502_in_the_log(
    watched: ServiceProcess, target: Target, windmill: WindmillEmulator, fault: str
) -> None:
    windmill.clear_requests()
    # A first sync (no record, no skip check): the CLI's own first tarball is broken.
    windmill.set_fault("tarball", fault, workspace=target.workspace_id, times=1)

    response = watched.post("/sync", target.body())

    # The CLI was told 502, failed, and the retry read a good answer.
    assert response.status_code == 200, response.text
    assert response.json()["pull_reason"] == "first sync"
    assert len(_cli_tarball_requests(windmill, target.workspace_id)) == 2
    assert "Traceback" not in watched.stderr_text()
    assert "workspaces/tarball could not be read to its end" in watched.log_text()


def test_a_refused_token_costs_one_request_and_no_cli(
    watched: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    skipped = skippable(watched, target)
    windmill.clear_requests()

    with watching_node(watched.data_dir) as node:
        response = watched.post("/sync", target.body(windmill_token=BAD_TOKEN))

    assert response.status_code != 200, response.text
    assert response.json()["error"] == "windmill_auth_failed"
    refused = [r for r in windmill.requests if r.status in (401, 403)]
    assert len(refused) == 1, [(r.endpoint, r.status) for r in refused]
    assert [r for r in windmill.requests if r.user_agent == "node"] == []
    assert not node, "the CLI was started"
    assert target.log()[0] == skipped["commit"]

    # A first sync has no record to check against: the CLI finds the refusal, as before.
    fresh = new_target(windmill, git_server)
    response = watched.post("/sync", fresh.body(windmill_token=BAD_TOKEN))
    assert response.status_code != 200, response.text
    assert response.json()["error"] == "windmill_auth_failed"
    assert fresh.log() == []
