"""Property-based fuzzing of the whole API from its own OpenAPI description.

Whatever schemathesis sends, the service answers without a crash (no 5xx
other than a reported sync failure) and never echoes a token it was sent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gitsync.config import Settings
from gitsync.web.app import create_app

# Contract 500s: the sync ran and failed for a reason it names.
SYNC_FAILURE_CODES = {
    "windmill_auth_failed",
    "windmill_failed",
    "git_auth_failed",
    "git_failed",
    "timeout",
    "sync_failed",
}


@pytest.fixture(scope="module")
def app(windmill, tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    return create_app(
        Settings.from_mapping(
            {
                "DATA_DIR": str(data),
                "WINDMILL_BASE_URL": windmill.base_url,
                # Valid-looking requests may reach Windmill (the emulator), never the Internet.
                "GIT_ALLOWED_HOSTS": "127.0.0.1",
                "SYNC_TIMEOUT": "60",
            }
        )
    )


OPENAPI = Path(__file__).parents[1] / "gitsync" / "web" / "openapi.json"
schema = schemathesis.openapi.from_path(OPENAPI)
STATUSES: set[int] = set()


@given(
    case=st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_crashes_or_echoes_tokens(app: Any, case: Any) -> None:
    response = case.call(app=app)  # in-process, through WSGI
    STATUSES.add(response.status_code)
    body = response.text
    if response.status_code >= 500:
        data = json.loads(body)
        assert data["success"] is False
        assert data["error"] in SYNC_FAILURE_CODES, body
    sent = case.body if isinstance(case.body, dict) else {}
    for field in ("windmill_token", "git_token"):
        value = sent.get(field)
        if isinstance(value, str) and len(value) >= 8:
            assert value not in body, f"{field} echoed in {body}"
    if response.status_code == 200 and case.path == "/sync":
        assert json.loads(body)["success"] is True


def test_the_fuzzer_reached_both_valid_and_invalid_requests() -> None:
    # Guards against a fuzz run that silently exercised nothing.
    assert {200, 400} <= STATUSES


def test_openapi_document_is_served_and_matches_the_checked_in_file(app: Any) -> None:
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200
    assert served.get_json() == json.loads(OPENAPI.read_text())
    assert set(served.get_json()["paths"]) == {
        "/health",
        "/openapi.json",
        "/sync",
        "/jobs",
        "/jobs/{job_id}",
        "/restore",
        "/history",
        "/ready",
        "/metrics",
        "/",
    }
