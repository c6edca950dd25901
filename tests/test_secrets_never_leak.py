"""No token in any command line, file under DATA_DIR, log line or response.

Runs after every other test, so it also checks everything those tests left
behind; it adds its own syncs through every failure path it can reach.
"""

from __future__ import annotations

import base64

import pytest

from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, Target
from tests.servers.proc_scan import ProcScanner, needles_for, scan_tree
from tests.servers.service_process import ServiceProcess

WRONG_GIT_TOKEN = "ghp_leaktest_wrong_4242424242"
WRONG_WM_TOKEN = "wm_leaktest_wrong_7373737373"


@pytest.mark.runs_last
def test_no_secret_leaks_anywhere(
    service: ServiceProcess, target: Target, windmill, git_server, scanner: ProcScanner
) -> None:
    # Success, no-op, and every failure path that carries a token.
    assert service.post("/sync", target.body()).status_code == 200
    target.workspace.add_script("f/team/leak_check", language="bash", content="echo x\n")
    assert service.post("/sync", target.body()).status_code == 200
    assert service.post("/sync", target.body()).status_code == 200
    assert service.post("/sync", target.body(git_token=WRONG_GIT_TOKEN)).status_code == 500
    assert service.post("/sync", target.body(windmill_token=WRONG_WM_TOKEN)).status_code == 500
    assert service.post("/sync", target.body(git_branch="-x")).status_code == 400
    assert service.post("/sync", target.body(unknown_field="y")).status_code == 400
    assert (
        service.post(
            "/sync", target.body(git_remote_url=f"https://u:{GIT_TOKEN}@h/r.git")
        ).status_code
        == 400
    )
    assert service.post("/sync", target.body(git_token=f"{GIT_TOKEN} spaces")).status_code == 400
    history = {
        "workspace": target.workspace_id,
        "git_remote_url": target.remote_url,
        "path": "f/team/leak_check",
    }
    assert service.post("/history", {**history, "git_token": WRONG_GIT_TOKEN}).status_code == 500
    assert service.post("/history", {**history, "git_token": GIT_TOKEN}).status_code == 200

    needles = [
        n
        for tok in (WINDMILL_TOKEN, GIT_TOKEN, WRONG_GIT_TOKEN, WRONG_WM_TOKEN)
        for n in needles_for(tok)
    ]
    assert any(base64.b64encode(f"git:{GIT_TOKEN}".encode()) == n for n in needles)

    hits = [h for h in scanner.hits() if h.where == "cmdline"]
    assert hits == [], f"tokens seen in command lines: {hits}"
    assert scan_tree(service.data_dir, needles) == []
    log = service.log_text().encode()
    assert not [n for n in needles if n in log], "a token reached the service log"
    for body in service.responses:
        assert not [n for n in needles if n in body.encode()], f"a token in a response: {body}"
    # Credentials never end up in git's config or in a remote URL on disk.
    for config in service.data_dir.rglob("config"):
        if config.parent.name.endswith(".git"):
            text = config.read_text()
            assert "http" not in text and "credential" not in text
