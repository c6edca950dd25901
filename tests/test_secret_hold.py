"""SECRET_SCAN=hold, the default: everything is backed up but the items holding a secret.

A sync pushes all it would push, except the items with a finding: each keeps
the version last backed up (or stays out if new), nothing of its new content
reaches the remote in any object, and the answer, the job record, the
status page, the metrics and the alert name it, until the secret is gone.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, new_target, start_service
from tests.secret_samples import LOOKALIKES, aws_key_id, aws_secret, github_classic, rsa_pkcs1
from tests.servers.alert_sink import AlertSink
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator


@pytest.fixture(scope="module")
def hold_service(
    windmill: WindmillEmulator,
    ca_pem: Path,
    sink: AlertSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    # No SECRET_SCAN: hold is the default.
    proc = start_service(
        tmp_path_factory.mktemp("hold"), windmill, ca_pem, ALERT_WEBHOOK_URL=sink.url
    )
    yield proc
    proc.stop()


def every_object(git_server: GitHttpServer, repo: str) -> bytes:
    """Every object the remote holds, decompressed, read by real git."""
    bare = git_server.repo_path(repo)
    return subprocess.run(
        ["git", "-C", str(bare), "cat-file", "--batch-all-objects", "--batch"],
        capture_output=True,
        check=True,
    ).stdout


def fsck(git_server: GitHttpServer, repo: str) -> None:
    bare = git_server.repo_path(repo)
    subprocess.run(["git", "-C", str(bare), "fsck", "--strict"], check=True, capture_output=True)


def held_gauge(service: ServiceProcess, target: Target) -> str:
    metrics = service.get("/metrics").text
    [line] = [
        line
        for line in metrics.splitlines()
        if line.startswith("windmill_git_sync_held_items{") and f'"{target.workspace_id}@' in line
    ]
    return line.rsplit(" ", 1)[1]


def held_names(data: dict[str, Any]) -> list[str]:
    return [h["item"] for h in data["held_items"]]


def leaky_script(token: str, key_id: str, secret: str, key: str) -> str:
    return "\n".join(
        [
            "import boto3",
            "",
            f'GITHUB = "{token}"',
            f'AWS_ACCESS_KEY_ID = "{key_id}"',
            f'aws_secret_access_key = "{secret}"',
            f'DEPLOY_KEY = """{key}"""',
            "",
            "def main():",
            "    return 1",
            "",
        ]
    )


def test_the_leaky_script_is_held_and_everything_else_is_pushed(
    hold_service: ServiceProcess,
    sink: AlertSink,
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
) -> None:
    service = hold_service
    target = new_target(windmill, git_server)
    assert service.post("/sync", target.body()).status_code == 200
    token, key_id, secret, key = github_classic(), aws_key_id(), aws_secret(), rsa_pkcs1()
    values = [token, key_id, secret, *key.splitlines()[1:-1]]
    target.workspace.add_script("f/team/leaky", content=leaky_script(token, key_id, secret, key))
    target.workspace.add_script("f/team/ordinary", content="def main():\n    return 42\n")

    response = service.post("/sync", target.body())

    # Not a clean success, for a caller that reads only the status or "success".
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["success"] is False
    assert data["error"] == "secrets_held"
    assert data["partial"] is True
    assert held_names(data) == ["script f/team/leaky"]
    held = data["held_items"][0]
    assert held["backed_up"] == "not at all"
    assert {f["detector"] for f in held["findings"]} == {
        "GitHub Token",
        "AWS Access Key",
        "Private Key",
    }
    assert all(f["file"] == "f/team/leaky.py" for f in held["findings"])
    assert "f/team/leaky" in data["message"] and "held back" in data["message"]
    # The ordinary change is on the remote; the leaky script is not, in any object.
    tree = target.tree()
    assert b"return 42" in tree["f/team/ordinary.py"]
    assert "f/team/leaky.py" not in tree
    assert not any(p.startswith("f/team/leaky") for p in tree)
    assert data["changed"] is True
    remote = every_object(git_server, target.repo)
    log = service.log_path.read_text()
    job = service.get(f"/jobs/{data['job_id']}").json()
    listed = service.get(f"/jobs?workspace={target.workspace_id}").json()
    page = service.get("/").text
    for value in values:
        assert value.encode() not in remote
        assert value not in response.text
        assert value not in log
        assert value not in json.dumps(job) and value not in json.dumps(listed)
        assert value not in page
    fsck(git_server, target.repo)
    # The job record, the list of jobs, the status page, the metrics and the alert name it.
    assert job["state"] == "partial"
    assert job["error"] == "secrets_held"
    assert held_names(job) == ["script f/team/leaky"]
    assert held_names(listed["jobs"][0]) == ["script f/team/leaky"]
    assert "Held back" in page and "script f/team/leaky" in page
    metrics = service.get("/metrics").text
    assert 'windmill_git_sync_secret_findings_total{action="held"' in metrics
    assert held_gauge(service, target) == "1.0"
    assert f'outcome="partial",target="{target.workspace_id}@' in metrics
    alerts = [a for a in sink.events("items_held") if a["workspace"] == target.workspace_id]
    assert len(alerts) == 1
    assert [h["item"] for h in alerts[0]["held_items"]] == ["script f/team/leaky"]
    for value in values:
        assert value not in json.dumps(alerts[0])

    # A later sync with nothing new still holds and reports it (the CLI is not even started),
    # and sends no second alert.
    again = service.post("/sync", target.body())
    assert again.status_code == 422, again.text
    assert again.json()["pull"] == "skipped"
    assert held_names(again.json()) == ["script f/team/leaky"]
    assert len([a for a in sink.events("items_held") if a["workspace"] == target.workspace_id]) == 1

    # The secret goes (into a Windmill secret variable): the script is backed up like any other.
    target.workspace.add_script(
        "f/team/leaky",
        content='import wmill\n\ndef main():\n    return wmill.get_variable("u/x/gh")\n',
    )
    released = service.post("/sync", target.body())
    assert released.status_code == 200, released.text
    assert released.json()["success"] is True
    assert released.json()["held_items"] == []
    assert b"get_variable" in target.tree()["f/team/leaky.py"]
    assert held_gauge(service, target) == "0.0"
    assert (
        "Held back"
        not in service.get("/").text.split(target.workspace_id, 1)[1].split("</section>", 1)[0]
    )


def test_a_held_item_keeps_its_previous_version_and_a_restore_says_so(
    hold_service: ServiceProcess,
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
) -> None:
    service = hold_service
    target = new_target(windmill, git_server)
    target.workspace.add_script("f/team/etl", content="def main():\n    return 'v1'\n")
    assert service.post("/sync", target.body()).status_code == 200
    token = github_classic()
    target.workspace.add_script(
        "f/team/etl", content=f'TOKEN = "{token}"\n\ndef main():\n    return "v2"\n'
    )
    target.workspace.add_script("f/team/other", content="def main():\n    return 'new'\n")

    response = service.post("/sync", target.body())

    assert response.status_code == 422, response.text
    data = response.json()
    assert data["held_items"][0]["item"] == "script f/team/etl"
    assert data["held_items"][0]["backed_up"] == "older version"
    tree = target.tree()
    assert b"v1" in tree["f/team/etl.py"] and token.encode() not in tree["f/team/etl.py"]
    assert "f/team/other.py" in tree
    assert token.encode() not in every_object(git_server, target.repo)

    restore = service.post(
        "/restore",
        {
            "windmill_token": target.body()["windmill_token"],
            "git_token": target.body()["git_token"],
            "git_remote_url": target.remote_url,
            "workspace": target.workspace_id,
            "git_ref": "main",
        },
    )
    assert restore.status_code == 200, restore.text
    restored = restore.json()
    assert [h["item"] for h in restored["held_items"]] == ["script f/team/etl"]
    assert restored["held_items"][0]["backed_up"] == "older version"
    assert "script f/team/etl" in restored["held_note"]
    assert token not in restore.text


def test_a_request_for_block_still_refuses_the_whole_sync(
    hold_service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    target.workspace.add_script("f/team/leaky", content=f'T = "{github_classic()}"\n')

    response = hold_service.post("/sync", target.body(secret_scan="block"))

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "secret_detected"
    assert target.log() == []


def test_workspaces_of_code_that_handles_keys_back_up_whole(
    hold_service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    """The shapes real workspaces hold (regexes, placeholders, local URLs, documentation keys)."""
    target = new_target(windmill, git_server)
    for sample in LOOKALIKES:
        base, ext = sample.path.rsplit(".", 1)
        if sample.path.endswith(".resource.yaml"):
            continue  # resources are written by the emulator's own serializer, below
        language = {"py": "python3", "ts": "bun"}[ext]
        target.workspace.add_script(base, language=language, content=sample.content)
    target.workspace.add_resource(
        "f/gcp/sa",
        resource_type="gcp_service_account",
        value={
            "client_email": "bot@project.iam.gserviceaccount.com",
            "private_key": "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
        },
    )
    target.workspace.add_resource(
        "f/db/local",
        resource_type="postgresql",
        value={"url": "postgres://postgres:changeme@localhost:5432/app"},
    )

    response = hold_service.post("/sync", target.body())

    assert response.status_code == 200, response.text
    assert response.json()["held_items"] == []
    assert response.json()["secret_findings"] == []
    tree = target.tree()
    assert "f/git/sync_repo.ts" in tree and "f/gcp/token.py" in tree
    assert any(p.startswith("f/gcp/sa.resource") for p in tree)
