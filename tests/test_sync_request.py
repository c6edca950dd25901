"""Validation of the POST /sync body (the HTTP layer is tested end to end elsewhere)."""

from __future__ import annotations

from typing import Any

import pytest

from gitsync.errors import RequestError
from gitsync.inputs.fields import canonical_remote_url, is_valid_branch
from gitsync.inputs.requests import parse_sync_request
from gitsync.web.errors import status_of

TOKEN = "ghp_abcdefghijklmnop0123456789"
BASE = {
    "windmill_token": "wm_abcdef123456",
    "git_remote_url": "https://github.com/acme/b.git",
    "git_token": TOKEN,
}


def body(**overrides: Any) -> dict[str, Any]:
    return {**BASE, **overrides}


def test_contract_defaults() -> None:
    req = parse_sync_request(body())
    assert req.workspace == "admins"
    assert req.git_branch == "main"
    assert req.git_user_name == "Windmill Git Sync"
    assert req.git_user_email == "windmill@example.com"


@pytest.mark.parametrize(
    ("present", "message"),
    [
        ({}, "Missing required fields: windmill_token, git_remote_url, git_token"),
        ({"git_token": TOKEN}, "Missing required fields: windmill_token, git_remote_url"),
        (
            {"windmill_token": "wm_1234", "git_remote_url": ""},
            "Missing required fields: git_remote_url, git_token",
        ),
    ],
)
def test_missing_fields(present: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_sync_request(present)
    assert info.value.message == message
    assert status_of(info.value) == 400  # the web layer's one table


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("git_remote_url", "http://github.com/a/b.git", "https://"),
        ("git_remote_url", "ext::sh -c touch% /tmp/pwned", "https://"),
        ("git_remote_url", "file:///etc", "https://"),
        ("git_remote_url", "/srv/repo.git", "https://"),
        ("git_remote_url", "--upload-pack=touch /tmp/x", "https://"),
        ("git_remote_url", f"https://user:{TOKEN}@github.com/a/b.git", "credentials"),
        ("git_remote_url", "https://github.com/a/b.git?x=1", "query"),
        ("git_remote_url", "https://github.com/a/../b.git", "repository path"),
        ("git_remote_url", "https://github.com/a/b.git\n", "control"),
        ("git_branch", "-x", "branch name"),
        ("git_branch", "+main", "branch name"),
        ("git_branch", "@", "branch name"),
        ("git_branch", "HEAD", "branch name"),
        ("git_branch", "refs/heads/x", "branch name"),
        ("git_branch", "a..b", "branch name"),
        ("git_branch", "x.lock", "branch name"),
        ("git_user_name", "Eve\ncommitter Mallory <m@x>", "control characters"),
        ("git_user_name", "\x1b[31mred", "control characters"),
        ("git_user_email", "eve@x>", "email"),
        ("workspace", "../etc", "workspace id"),
        ("git_token", "has space inside", "printable"),
        ("git_token", "x" * 513, "printable"),
    ],
)
def test_invalid_values_are_named_and_never_echoed(field: str, value: str, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_sync_request(body(**{field: value}))
    message = info.value.message
    assert field in message and fragment in message
    assert TOKEN not in message
    if len(value) > 4:  # short values like "HEAD" legitimately appear in the rule text
        assert value not in message


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(RequestError, match="Unknown field: git_password"):
        parse_sync_request(body(git_password="x"))


def test_wrong_types_name_the_field() -> None:
    with pytest.raises(RequestError, match="Invalid git_token: must be a string"):
        parse_sync_request(body(git_token=12345))


def test_remote_url_is_canonical() -> None:
    assert (
        canonical_remote_url("https://GitHub.com:443/acme/b.git/")
        == "https://github.com/acme/b.git"
    )
    assert canonical_remote_url("https://127.0.0.1:8443/r.git") == "https://127.0.0.1:8443/r.git"


@pytest.mark.parametrize("name", ["main", "backups/nightly", "release-1.2", "feature_x"])
def test_ordinary_branches_pass(name: str) -> None:
    assert is_valid_branch(name)
