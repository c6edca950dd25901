"""Secrets written into scripts are found before the Git host sees them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GIT_TOKEN, Target, new_target, start_service
from tests.secret_samples import rsa_pkcs1
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

# Shaped like the real thing (the scanner's heuristics skip obvious placeholders).
GITHUB_TOKEN = "ghp_Vb3kQ9xLm2Rt7YwZ4pNc8Hs1Jd6Fg0Ka5EuT"
AWS_KEY_ID = "AKIAQ7RZ4MXK2PLN5WVB"
AWS_SECRET = "q8Hn2Lk5Vw9Rt3Zc7Xm1Pb6Jd4Fs0Gy2Ua8Ee5T"
# A whole key, made for this run: a header alone is no longer a finding.
PRIVATE_KEY = rsa_pkcs1()
ALLOWED = "ghp_Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0Lz9Xc8Vb7N"
VALUES = (
    GITHUB_TOKEN,
    AWS_KEY_ID,
    AWS_SECRET,
    *PRIVATE_KEY.splitlines()[1:-1],
    ALLOWED,
)


def script(*lines: str) -> str:
    return "\n".join(["import requests", "", *lines, "", "def main():", "    return 1", ""])


def assert_no_value(text: str) -> None:
    for value in VALUES:
        assert value not in text


def findings_of(data: dict[str, object]) -> list[tuple[str, str, int, str]]:
    found = data["secret_findings"]
    assert isinstance(found, list)
    return [(f["item"], f["file"], f["line"], f["detector"]) for f in found]


@pytest.fixture(scope="module")
def block_service(
    windmill: WindmillEmulator, ca_pem: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = start_service(tmp_path_factory.mktemp("block"), windmill, ca_pem, SECRET_SCAN="block")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def warn_service(
    windmill: WindmillEmulator, ca_pem: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = start_service(tmp_path_factory.mktemp("warn"), windmill, ca_pem, SECRET_SCAN="warn")
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("lines", "line", "detector"),
    [
        ((f'TOKEN = "{GITHUB_TOKEN}"',), 3, "GitHub Token"),
        (
            (f'AWS_ACCESS_KEY_ID = "{AWS_KEY_ID}"', f'aws_secret_access_key = "{AWS_SECRET}"'),
            3,
            "AWS Access Key",
        ),
        ((f'KEY = """{PRIVATE_KEY}"""',), 3, "Private Key"),
    ],
    ids=["github-token", "aws-key-pair", "private-key"],
)
def test_a_secret_in_a_script_is_blocked_and_nothing_is_pushed(
    block_service: ServiceProcess,
    target: Target,
    lines: tuple[str, ...],
    line: int,
    detector: str,
) -> None:
    service = block_service
    assert service.post("/sync", target.body()).status_code == 200
    before = target.log()
    target.workspace.add_script("f/team/leaky", content=script(*lines))

    response = service.post("/sync", target.body())

    assert response.status_code == 422, response.text
    data = response.json()
    assert data["error"] == "secret_detected"
    assert ("script f/team/leaky", "f/team/leaky.py", line, detector) in findings_of(data)
    assert "f/team/leaky.py line" in data["message"]
    assert_no_value(response.text)
    assert target.log() == before  # nothing pushed
    assert "f/team/leaky.py" not in target.tree()
    job = service.get(f"/jobs/{data['job_id']}").json()
    assert job["state"] == "refused"
    assert job["error"] == "secret_detected"
    assert ("script f/team/leaky", "f/team/leaky.py", line, detector) in findings_of(job)
    assert_no_value(json.dumps(job))
    metrics = service.get("/metrics").text
    assert 'windmill_git_sync_secret_findings_total{action="blocked"' in metrics


def test_a_secret_in_a_resource_value_is_blocked(
    block_service: ServiceProcess, target: Target
) -> None:
    service = block_service
    target.workspace.add_resource(
        "f/team/github", resource_type="github", value={"token": GITHUB_TOKEN}
    )

    response = service.post("/sync", target.body())

    assert response.status_code == 422, response.text
    items = {item for item, *_ in findings_of(response.json())}
    assert items == {"resource f/team/github"}
    assert_no_value(response.text)
    assert target.log() == []


def test_warn_pushes_and_reports_the_findings(
    warn_service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    target.workspace.add_script("f/team/leaky", content=script(f'TOKEN = "{GITHUB_TOKEN}"'))

    response = warn_service.post("/sync", target.body())

    assert response.status_code == 200, response.text
    data = response.json()
    assert findings_of(data) == [("script f/team/leaky", "f/team/leaky.py", 3, "GitHub Token")]
    assert "f/team/leaky.py" in target.tree()  # pushed, as warn says
    job = warn_service.get(f"/jobs/{data['job_id']}").json()
    assert findings_of(job) == findings_of(data)
    log = warn_service.log_path.read_text()
    assert "possible secret(s)" in log and "f/team/leaky.py" in log
    assert GITHUB_TOKEN not in log
    metrics = warn_service.get("/metrics").text
    assert 'windmill_git_sync_secret_findings_total{action="pushed"' in metrics


def test_a_request_may_narrow_the_policy_but_not_loosen_it(
    block_service: ServiceProcess,
    warn_service: ServiceProcess,
    windmill: WindmillEmulator,
    git_server: GitHttpServer,
) -> None:
    service = block_service
    leaky = script(f'TOKEN = "{GITHUB_TOKEN}"')
    strict = new_target(windmill, git_server)
    strict.workspace.add_script("f/team/leaky", content=leaky)
    # The operator's "block" holds against a request asking for less.
    for asked in ("warn", "off"):
        response = service.post("/sync", strict.body(secret_scan=asked))
        assert response.status_code == 422, response.text
    assert strict.log() == []
    # A "warn" service blocks a request that asks for "block".
    loose = new_target(windmill, git_server)
    loose.workspace.add_script("f/team/leaky", content=leaky)
    response = warn_service.post("/sync", loose.body(secret_scan="block"))
    assert response.status_code == 422, response.text
    assert loose.log() == []
    bad = warn_service.post("/sync", loose.body(secret_scan="maybe"))
    assert bad.status_code == 400
    assert "secret_scan" in bad.json()["message"]


def test_an_allowlisted_line_passes_on_every_later_sync(
    service: ServiceProcess, target: Target
) -> None:
    target.workspace.add_script(
        "f/team/fixture",
        content=script(f'EXAMPLE = "{ALLOWED}"  # pragma: allowlist secret'),
    )
    first = service.post("/sync", target.body())
    assert first.status_code == 200, first.text
    assert first.json()["secret_findings"] == []
    target.workspace.add_script(
        "f/team/fixture",
        content=script(f'EXAMPLE = "{ALLOWED}"  # pragma: allowlist secret', "RETRIES = 3"),
    )

    second = service.post("/sync", target.body())

    assert second.status_code == 200, second.text
    assert second.json()["changed"] is True
    assert second.json()["secret_findings"] == []
    assert b"pragma: allowlist secret" in target.tree()["f/team/fixture.py"]


def test_an_ordinary_workspace_raises_no_finding(
    service: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    target = new_target(windmill, git_server)
    target.workspace.seed_synthetic(300)

    response = service.post("/sync", target.body(include_users=True, include_settings=True))

    assert response.status_code == 200, response.text
    assert response.json()["secret_findings"] == []


GH013 = """\
echo "error: GH013: Repository rule violations found for refs/heads/main." >&2
echo "error: - GITHUB PUSH PROTECTION" >&2
echo "error:   Push cannot contain secrets" >&2
echo "error:   —— GitHub Personal Access Token ——————————————————————" >&2
echo "error:     locations:" >&2
echo "error:       - commit: 8f3c2a1 path: f/team/leaky.py:3" >&2
echo "error:   (token seen: $SECRET_SEEN)" >&2
exit 1
"""


def test_a_push_the_host_rejects_by_rule_is_reported_and_not_retried(
    service: ServiceProcess, target: Target
) -> None:
    """GitHub's push protection (GH013) refuses a push: say so plainly, do not retry."""
    assert service.post("/sync", target.body()).status_code == 200
    before = target.log()
    hook = target.git_server.repo_path(target.repo) / "hooks" / "pre-receive"
    # The hook echoes the request's own Git token as if the host quoted it back.
    hook.write_text("#!/bin/sh\nSECRET_SEEN=" + GIT_TOKEN + "\n" + GH013)
    hook.chmod(0o755)
    target.workspace.add_script("f/team/leaky", content=script("RETRIES = 3"))
    target.git_server.clear_requests()

    response = service.post("/sync", target.body())

    assert response.status_code == 500, response.text
    data = response.json()
    assert data["error"] == "git_push_rejected"
    assert "GH013: Repository rule violations found" in data["message"]
    assert "Push cannot contain secrets" in data["message"]
    assert "push protection" in data["message"].lower()  # the hint
    assert GIT_TOKEN not in response.text
    assert data.get("attempts", 1) == 1
    assert len(target.git_server.receive_pack_posts(target.repo)) == 1  # not retried
    assert target.log() == before
