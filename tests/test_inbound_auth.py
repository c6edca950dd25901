"""Optional inbound authentication (SYNC_AUTH_TOKEN_FILE) and GIT_ALLOWED_HOSTS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Target, start_service
from tests.servers.service_process import ServiceProcess

INBOUND_TOKEN = "inbound-7f3a9c1e5b2d4f60a8e1"


@pytest.fixture(scope="module")
def guarded(
    windmill, ca_pem: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("guarded")
    token_file = root / "sync_token"
    token_file.write_text(INBOUND_TOKEN + "\n")
    proc = start_service(
        root, windmill, ca_pem, SYNC_AUTH_TOKEN_FILE=str(token_file), GIT_ALLOWED_HOSTS="127.0.0.1"
    )
    yield proc
    proc.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_stays_open(guarded: ServiceProcess) -> None:
    assert guarded.get("/health").json() == {"status": "healthy"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-token-0000000000000"),
        bearer(INBOUND_TOKEN[:-1]),
        {"Authorization": INBOUND_TOKEN},
        {"Authorization": f"Basic {INBOUND_TOKEN}"},
    ],
    ids=["none", "wrong", "prefix", "no-scheme", "basic"],
)
def test_requests_without_the_token_are_refused(
    guarded: ServiceProcess, target: Target, windmill, headers: dict[str, str]
) -> None:
    windmill.clear_requests()
    for response in (
        guarded.post("/sync", target.body(), headers=headers),
        guarded.get("/openapi.json", headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"
    assert windmill.requests == []


def test_the_right_token_is_let_through(guarded: ServiceProcess, target: Target) -> None:
    response = guarded.post("/sync", target.body(), headers=bearer(INBOUND_TOKEN))
    assert response.status_code == 200, response.text
    assert target.log()[0] == response.json()["commit"]
    assert guarded.get("/openapi.json", headers=bearer(INBOUND_TOKEN)).status_code == 200


def test_hosts_outside_the_allow_list_are_refused(guarded: ServiceProcess, target: Target) -> None:
    response = guarded.post(
        "/sync",
        target.body(git_remote_url="https://github.com/a/b.git"),
        headers=bearer(INBOUND_TOKEN),
    )
    assert response.status_code == 400
    assert response.json()["message"] == (
        "Invalid git_remote_url: names a host that is not in GIT_ALLOWED_HOSTS"
    )


def test_authenticated_start_up_does_not_warn(guarded: ServiceProcess) -> None:
    assert "inbound authentication is off" not in guarded.log_text()
