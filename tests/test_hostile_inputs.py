"""Hostile input to POST /sync: rejected before anything touches disk, network or a process.

Each case asserts the status, that the message names the problem, that no
token is echoed, and that nothing happened: no request reached Windmill or
the Git server, no new target appeared in DATA_DIR, no marker file was made.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, Target
from tests.servers.service_process import ServiceProcess

PWNED = Path("/tmp/wgs-pwned-marker")
INJECT = f"touch {PWNED}"

URL_CASES = [
    ("ext-transport", f"ext::sh -c {INJECT.replace(' ', '% ')}", "https://"),
    ("fd-transport", "fd::3", "https://"),
    ("file-url", "file:///etc/passwd", "https://"),
    ("local-path", "/srv/repo.git", "https://"),
    ("relative-path", "../../repo.git", "https://"),
    ("ssh", "ssh://git@github.com/acme/b.git", "https://"),
    ("scp-like", "git@github.com:acme/b.git", "https://"),
    ("git-protocol", "git://github.com/acme/b.git", "https://"),
    ("plain-http", "http://github.com/acme/b.git", "https://"),
    ("upload-pack-option", f"--upload-pack={INJECT};:", "https://"),
    ("config-option", "-c core.sshCommand=x", "https://"),
    ("userinfo-token", f"https://x-access-token:{GIT_TOKEN}@github.com/a/b.git", "credentials"),
    ("userinfo-user", f"https://{GIT_TOKEN}@github.com/a/b.git", "credentials"),
    ("query", "https://github.com/acme/b.git?service=git-receive-pack", "query"),
    ("fragment", "https://github.com/acme/b.git#main", "query"),
    ("dot-dot", "https://github.com/acme/../../etc/b.git", "repository path"),
    ("newline", "https://github.com/acme/b.git\nX: y", "control"),
    ("ansi", "https://github.com/\x1b[31macme/b.git", "control"),
    ("space", "https://github.com/acme b.git", "control"),
    ("bad-port", "https://github.com:99999/acme/b.git", "port"),
    ("no-host", "https:///acme/b.git", "host"),
    ("host-injection", "https://github.com%0a.helper=x/acme/b.git", "host"),
    ("too-long", "https://github.com/" + "a" * 3000 + ".git", "too long"),
    ("not-a-string", 12345, "must be a string"),
]

BRANCH_CASES = [
    ("dash", "-x"),
    ("force-option", "--force"),
    ("force-refspec", "+main"),
    ("at", "@"),
    ("head", "HEAD"),
    ("reflog", "@{-1}"),
    ("full-ref", "refs/heads/x"),
    ("range", "a..b"),
    ("newline", "a\nb"),
    ("lock", "x.lock"),
    ("double-slash", "a//b"),
    ("space", "a b"),
    ("hidden", ".hidden"),
    ("trailing-slash", "main/"),
    ("tilde", "main~1"),
    ("colon", "ma:in"),
    ("too-long", "b" * 201),
    ("upload-pack", f"--upload-pack={INJECT}"),
]

AUTHOR_CASES = [
    ("git_user_name", "Eve\ncommitter Mallory <m@x>", "control characters"),
    ("git_user_name", "\x1b[31mred\x1b[0m", "control characters"),
    ("git_user_name", "Eve <eve@x>", "'<', '>'"),
    ("git_user_name", "n" * 101, "1 to 100"),
    ("git_user_name", "   ", "blank"),
    ("git_user_email", "eve@x>", "email"),
    ("git_user_email", "no-at-sign", "email"),
    ("git_user_email", "eve@x\nX: y", "email"),
    ("git_user_email", "a" * 250 + "@x.io", "email"),
    ("workspace", "../etc", "workspace id"),
    ("workspace", "a/b", "workspace id"),
    ("workspace", "ws\n", "workspace id"),
    ("workspace", "w" * 51, "workspace id"),
    ("windmill_token", "has a space", "printable"),
    ("windmill_token", "line\nbreak", "printable"),
    ("git_token", "tök_non_ascii_token", "printable"),
    ("git_token", "t" * 600, "printable"),
    ("git_username", "user name", "letters"),
]


@pytest.fixture
def quiet(service: ServiceProcess, windmill, git_server) -> Any:
    """Snapshot of everything a rejected request must not touch."""
    PWNED.unlink(missing_ok=True)
    windmill.clear_requests()
    git_server.clear_requests()
    targets = service.data_dir / "targets"
    before = set(targets.iterdir()) if targets.exists() else set()

    def assert_untouched() -> None:
        assert windmill.requests == [], "a request reached Windmill"
        assert git_server.requests == [], "a request reached the Git server"
        after = set(targets.iterdir()) if targets.exists() else set()
        assert after == before, "a target directory was created"
        assert not PWNED.exists(), "an injected command ran"

    return assert_untouched


def _assert_rejected(response: Any, field: str, fragment: str) -> None:
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["success"] is False
    assert field in data["message"] and fragment in data["message"], data["message"]
    assert GIT_TOKEN not in response.text and WINDMILL_TOKEN not in response.text


@pytest.mark.parametrize(
    ("value", "fragment"), [c[1:] for c in URL_CASES], ids=[c[0] for c in URL_CASES]
)
def test_hostile_remote_urls(
    service: ServiceProcess, target: Target, quiet: Any, value: Any, fragment: str
) -> None:
    response = service.post("/sync", target.body(git_remote_url=value))
    _assert_rejected(response, "git_remote_url", fragment)
    if isinstance(value, str) and len(value) > 6:
        assert value not in response.text
    quiet()


@pytest.mark.parametrize("value", [c[1] for c in BRANCH_CASES], ids=[c[0] for c in BRANCH_CASES])
def test_hostile_branches(service: ServiceProcess, target: Target, quiet: Any, value: str) -> None:
    response = service.post("/sync", target.body(git_branch=value))
    _assert_rejected(response, "git_branch", "branch name")
    quiet()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    AUTHOR_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(AUTHOR_CASES)],
)
def test_hostile_identities_workspaces_and_tokens(
    service: ServiceProcess, target: Target, quiet: Any, field: str, value: str, fragment: str
) -> None:
    response = service.post("/sync", target.body(**{field: value}))
    _assert_rejected(response, field, fragment)
    if len(value) > 6:
        assert value not in response.text
    quiet()


def test_unknown_fields_are_rejected(service: ServiceProcess, target: Target, quiet: Any) -> None:
    response = service.post("/sync", target.body(git_password=GIT_TOKEN))
    _assert_rejected(response, "git_password", "Unknown field")
    quiet()


@pytest.mark.parametrize(
    "body", [[1, 2], "a string", 42, None], ids=["list", "string", "number", "null"]
)
def test_non_object_bodies(service: ServiceProcess, quiet: Any, body: Any) -> None:
    response = service.post(
        "/sync", data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "JSON object" in response.json()["message"]
    quiet()


def _raw_post(url: str, headers: dict[str, str], chunks: list[bytes] | bytes) -> tuple[int, dict]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", "/sync")
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        try:
            if isinstance(chunks, bytes):
                conn.send(chunks)
            else:
                for chunk in chunks:
                    conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all: fine
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_oversized_body_is_refused(service: ServiceProcess, target: Target, quiet: Any) -> None:
    body = json.dumps(target.body(padding="x" * 100_000)).encode()
    status, data = _raw_post(
        service.url, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body
    )
    assert status == 413
    assert "larger than" in data["message"]
    quiet()


def test_oversized_chunked_body_is_refused_not_truncated(
    service: ServiceProcess, target: Target, quiet: Any
) -> None:
    # Valid JSON followed by padding: truncation at the limit would parse.
    payload = json.dumps(target.body()).encode() + b" " * 300_000
    chunks = [payload[i : i + 8192] for i in range(0, len(payload), 8192)]
    status, data = _raw_post(
        service.url, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, chunks
    )
    assert status == 413
    assert "larger than 65536 bytes" in data["message"]
    quiet()


def test_small_chunked_body_is_read_whole(
    service: ServiceProcess, target: Target, quiet: Any
) -> None:
    # Chunked bodies within MAX_BODY_BYTES are read (waitress de-chunks them):
    # the field at the very end, in the last chunk, is seen and refused.
    payload = json.dumps(target.body(surprise="x")).encode()
    status, data = _raw_post(
        service.url,
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        [payload[i : i + 7] for i in range(0, len(payload), 7)],
    )
    assert status == 400
    assert "surprise" in data["message"]
    quiet()


@pytest.mark.parametrize(
    ("content_type", "data", "status", "fragment"),
    [
        ("text/plain", b'{"a": 1}', 415, "Content-Type: application/json"),
        ("application/x-www-form-urlencoded", b"windmill_token=x", 415, "must be JSON"),
        ("application/json", b"{not json", 400, "not valid JSON"),
        ("application/json", b"\xff\xfe\x00garbage", 400, "not valid JSON"),
        ("application/json", b"", 400, "not valid JSON"),
    ],
    ids=["text-plain", "form", "broken-json", "non-utf8", "empty"],
)
def test_bodies_that_are_not_json(
    service: ServiceProcess, quiet: Any, content_type: str, data: bytes, status: int, fragment: str
) -> None:
    response = service.post("/sync", data=data, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert fragment in response.json()["message"]
    quiet()


def test_the_open_endpoint_is_announced_at_start_up(service: ServiceProcess) -> None:
    assert "inbound authentication is off" in service.log_text()
