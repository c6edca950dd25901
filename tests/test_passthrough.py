"""The recording pass-through between the CLI and Windmill (#16), against the real emulator."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.parse

import pytest

from gitsync.secrets import Secret
from gitsync.windmill.body import Body
from gitsync.windmill.recorder import Exchange, PassThrough, Request, Upstream
from tests.conftest import WINDMILL_TOKEN, Target
from tests.servers.windmill_emulator import WindmillEmulator

TARBALL = (
    "api/w/{ws}/workspaces/tarball?archive_type=zip&plain_secret=false&skip_variables=false"
    "&skip_resources=false&skip_secrets=true&include_schedules=true&include_triggers=true"
    "&include_users=false&include_groups=true&include_settings=false&include_key=false"
)


def _get(
    url: str, path: str, *, method: str = "GET", token: str = WINDMILL_TOKEN
) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _requests_for(windmill: WindmillEmulator, workspace: str, since: int) -> list[str]:
    return [r.endpoint for r in windmill.requests[since:] if r.workspace == workspace]


def test_only_the_runs_secret_path_is_served_and_only_gets(
    windmill: WindmillEmulator, target: Target
) -> None:
    passthrough = PassThrough(Upstream(windmill.base_url, extra_ca=None), {}, timeout=10)
    before = len(windmill.requests)
    with passthrough.running():
        url = passthrough.url
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1"
        secret_path = parts.path  # "/<secret>/"
        api = f"api/w/{target.workspace_id}/workspaces/list_ws_specific"

        assert _get(url, "/" + api)[0] == 404
        assert _get(url, "/not-the-secret/" + api)[0] == 404
        assert _get(url, secret_path + "not-api")[0] == 404
        assert _get(url, secret_path + api, method="POST")[0] == 404
        assert _requests_for(windmill, target.workspace_id, before) == []

        status, _ = _get(url, secret_path + api)
        assert status == 200
    assert _requests_for(windmill, target.workspace_id, before) == ["list_ws_specific"]
    assert [e.request.target for e in passthrough.exchanges()] == [api]
    # A different run, a different secret.
    assert PassThrough(passthrough.upstream, {}, timeout=10).secret.reveal() != (
        passthrough.secret.reveal()
    )


def test_replay_answers_what_the_check_fetched_and_unknown_requests_go_live(
    windmill: WindmillEmulator, target: Target
) -> None:
    upstream = Upstream(windmill.base_url, extra_ca=None)
    ws = target.workspace_id
    tarball = Request("GET", TARBALL.format(ws=ws), ())
    fetched = upstream.fetch_with_token(tarball, Secret(WINDMILL_TOKEN), timeout=10)
    before = len(windmill.requests)
    passthrough = PassThrough(upstream, {tarball: fetched}, timeout=10)
    with passthrough.running():
        prefix = urllib.parse.urlsplit(passthrough.url).path
        status, body = _get(passthrough.url, prefix + tarball.target)
        assert (status, body) == (200, fetched.body.read_all())
        assert _requests_for(windmill, ws, before) == []  # replayed, not asked again
        assert _get(passthrough.url, prefix + f"api/w/{ws}/shared_ui/get")[0] == 200
    assert _requests_for(windmill, ws, before) == ["shared_ui"]
    assert [r.endpoint for r in passthrough.live_requests()] == ["shared_ui/get"]
    assert len(passthrough.exchanges()) == 2


def test_a_retry_reads_windmill_live(windmill: WindmillEmulator, target: Target) -> None:
    upstream = Upstream(windmill.base_url, extra_ca=None)
    request = Request("GET", f"api/w/{target.workspace_id}/shared_ui/get", ())
    stale = Exchange(request, 500, "text/plain", Body.of(b"Internal: replayed failure"))
    passthrough = PassThrough(upstream, {request: stale}, timeout=10)
    with passthrough.running():
        prefix = urllib.parse.urlsplit(passthrough.url).path
        passthrough.begin_attempt(first=True)
        assert _get(passthrough.url, prefix + request.target)[0] == 500
        passthrough.begin_attempt(first=False)
        assert _get(passthrough.url, prefix + request.target)[0] == 200


def test_an_unreachable_windmill_is_a_network_error_for_the_cli() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    passthrough = PassThrough(Upstream(dead, extra_ca=None), {}, timeout=5)
    with passthrough.running():
        prefix = urllib.parse.urlsplit(passthrough.url).path
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            _get(passthrough.url, prefix + "api/users/whoami")


def test_archive_digest_ignores_build_times_but_not_content(
    windmill: WindmillEmulator, target: Target
) -> None:
    upstream = Upstream(windmill.base_url, extra_ca=None)
    request = Request("GET", TARBALL.format(ws=target.workspace_id), ())
    token = Secret(WINDMILL_TOKEN)
    first = upstream.fetch_with_token(request, token, timeout=10)
    time.sleep(2.1)  # zip times have a 2-second resolution
    second = upstream.fetch_with_token(request, token, timeout=10)
    assert first.body.read_all() != second.body.read_all()
    assert first.digest() == second.digest()

    target.workspace.add_script("f/team/one_more", language="bash", content="echo 1\n")
    third = upstream.fetch_with_token(request, token, timeout=10)
    assert third.digest() != first.digest()
    # A token that cannot read the workspace gets a different answer, never the same digest.
    refused = upstream.fetch_with_token(request, Secret("wm_tok_wrong_0000000000"), timeout=10)
    assert refused.status == 401 and refused.digest() != third.digest()


def _zip(entries: dict[str, bytes], method: int = 8) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _spooled(data: bytes) -> Body:
    body = Body()
    for start in range(0, len(data), 1 << 16):
        body.write(data[start : start + (1 << 16)])
    return body


def test_archive_entry_digests_follow_the_content_not_the_archive() -> None:
    """The skip check's per-entry digests: stored bytes, read straight from the archive."""
    import os

    from gitsync.windmill.body import SPOOL_BYTES
    from gitsync.windmill.recorder import zip_entries

    entries = {f"f/team/s{i}.py": f"print({i})\n".encode() * 50 for i in range(40)}
    entries["f/team/big.resource.file.bin"] = os.urandom(SPOOL_BYTES)  # spooled to disk
    before = dict(zip_entries(_spooled(_zip(entries))) or [])
    assert list(before) == list(entries)
    assert dict(zip_entries(Body.of(_zip(entries))) or []) == before  # built again: the same
    edited = {**entries, "f/team/s7.py": b"print('edited')\n"}
    after = dict(zip_entries(Body.of(_zip(edited))) or [])
    assert [name for name in entries if after[name] != before[name]] == ["f/team/s7.py"]
    # Kept in memory or spooled to disk: read alike.
    small = {k: v for k, v in edited.items() if not k.endswith(".bin")}
    assert zip_entries(Body.of(_zip(small))) == zip_entries(_spooled(_zip(small)))
    # The same content stored another way reads as changed: a larger pull, never a miss.
    stored = dict(zip_entries(Body.of(_zip(small, method=0))) or [])
    assert all(stored[name] != after[name] for name in small)
    # Not a zip, or cut short: no entries, so the skip check cannot match.
    assert zip_entries(Body.of(b"not a zip")) is None
    whole = _zip(small)
    cut = whole[:200] + whole[-2000:]  # the directory intact, the entries gone
    assert zip_entries(Body.of(cut)) is None
