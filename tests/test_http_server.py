"""waitress as the service's HTTP server: its limits, its access log, /health under load.

Everything goes through the real service (``windmill-git-sync serve``) over
real sockets; raw sockets where a client library would hide what the server
sent (a ``100 Continue``, a closed connection).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, Target, new_target, start_service
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess
from tests.servers.windmill_emulator import WindmillEmulator

MAX_BODY = 64 * 1024  # the default MAX_BODY_BYTES
IDLE = 2  # IDLE_CONNECTION_TIMEOUT of the service under test
CONCURRENT, QUEUED = 2, 3


@pytest.fixture(scope="module")
def server(
    windmill: WindmillEmulator, ca_pem: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    proc = start_service(
        tmp_path_factory.mktemp("http-server"),
        windmill,
        ca_pem,
        IDLE_CONNECTION_TIMEOUT=str(IDLE),
        MAX_CONCURRENT_SYNCS=str(CONCURRENT),
        MAX_QUEUED_SYNCS=str(QUEUED),
        RETRY_ATTEMPTS="1",
        LOG_LEVEL="INFO",
    )
    yield proc
    proc.stop()


def connect(url: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, limit: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    received = b""
    sock.settimeout(limit)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    return received, time.monotonic() - start


def json_of(raw: bytes) -> dict[str, Any]:
    body = raw.split(b"\r\n\r\n", 1)[1]
    result: dict[str, Any] = json.loads(body)
    return result


def padded_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (its only field is unknown to the service)."""
    shell = json.dumps({"padding": ""}).encode()
    return json.dumps({"padding": "x" * (size - len(shell))}).encode()


def sync_headers(length: int, *extra: str) -> bytes:
    lines = [
        "POST /sync HTTP/1.1",
        "Host: sync",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- body size: MAX_BODY_BYTES exactly, with and without 100-continue ---------------------


def test_a_body_of_exactly_max_body_bytes_is_read(server: ServiceProcess) -> None:
    body = padded_body(MAX_BODY)
    assert len(body) == MAX_BODY
    response = requests.post(
        server.url + "/sync", data=body, headers={"Content-Type": "application/json"}, timeout=30
    )
    # Read and parsed: refused for its field, not for its size.
    assert response.status_code == 400, response.text
    assert "Missing required fields" in response.json()["message"]


def test_one_byte_more_is_refused_before_the_body_is_sent(server: ServiceProcess) -> None:
    with connect(server.url) as sock:
        sock.sendall(sync_headers(MAX_BODY + 1))  # and never the body
        raw, seconds = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
    assert seconds < 5  # answered at once, not after waiting for the body
    assert json_of(raw) == {
        "success": False,
        "error": "body_too_large",
        "message": f"Request body is larger than {MAX_BODY} bytes",
    }


def test_expect_100_continue_over_the_limit_gets_413_and_no_100(server: ServiceProcess) -> None:
    with connect(server.url) as sock:
        sock.sendall(sync_headers(5 * 1024 * 1024, "Expect: 100-continue"))
        raw, seconds = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:200]
    assert b"100 Continue" not in raw
    assert seconds < 5
    assert json_of(raw)["error"] == "body_too_large"


def test_expect_100_continue_within_the_limit_gets_100_then_the_answer(
    server: ServiceProcess,
) -> None:
    body = padded_body(MAX_BODY)
    with connect(server.url) as sock:
        sock.sendall(sync_headers(len(body), "Expect: 100-continue", "Connection: close"))
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        raw, _ = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
    assert "Missing required fields" in json_of(raw)["message"]


def test_http_1_0_chunked_body_gets_411(server: ServiceProcess) -> None:
    # HTTP/1.0 has no chunked coding; waitress leaves it alone and the body reads as empty.
    with connect(server.url) as sock:
        sock.sendall(
            b"POST /sync HTTP/1.0\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
        raw, _ = read_until_closed(sock)
    assert raw.startswith(b"HTTP/1.0 411 "), raw[:200]
    assert json_of(raw)["error"] == "length_required"


# -- headers, idle and stalled connections ------------------------------------------------


def test_oversized_headers_get_431(server: ServiceProcess) -> None:
    with connect(server.url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        raw, _ = read_until_closed(sock)
    assert b" 431 " in raw.split(b"\r\n", 1)[0], raw[:200]
    assert json_of(raw)["error"] == "headers_too_large"


@pytest.mark.parametrize(
    "sent", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"], ids=["idle", "stalled-headers"]
)
def test_idle_and_stalled_connections_are_closed(server: ServiceProcess, sent: bytes) -> None:
    with connect(server.url) as sock:
        sock.sendall(sent)
        raw, seconds = read_until_closed(sock, limit=30)
    assert raw == b""
    # Closed after IDLE_CONNECTION_TIMEOUT, found by a sweep every IDLE seconds at most.
    assert IDLE - 0.5 < seconds < 2 * IDLE + 3


def test_a_kept_alive_connection_is_reused_within_the_timeout(server: ServiceProcess) -> None:
    with requests.Session() as session:
        first = session.get(server.url + "/health", timeout=10)
        second = session.get(server.url + "/health", timeout=10)
    assert first.status_code == second.status_code == 200


def test_the_server_header_names_no_version(server: ServiceProcess) -> None:
    response = requests.get(server.url + "/health", timeout=10)
    assert response.headers["Server"] == "windmill-git-sync"


# -- the access log ----------------------------------------------------------------------


def access_lines(server: ServiceProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "http":
                lines.append(record)
    return lines


def test_one_access_log_line_per_request_without_query_body_or_header_values(
    server: ServiceProcess,
) -> None:
    marker = f"probe{time.monotonic_ns()}"
    before = len(access_lines(server))
    listed = requests.get(
        server.url + "/jobs",
        params={"workspace": marker, "limit": "5"},
        headers={"X-Probe": marker + "-header"},
        timeout=10,
    )
    refused = requests.post(
        server.url + "/sync",
        json={"windmill_token": WINDMILL_TOKEN, "git_token": GIT_TOKEN, "workspace": marker},
        timeout=10,
    )
    with connect(server.url) as sock:  # refused by waitress itself, before the app
        sock.sendall(sync_headers(MAX_BODY + 1))
        read_until_closed(sock)
    assert listed.status_code == 200 and refused.status_code == 400

    def new_lines() -> list[dict[str, Any]]:
        return access_lines(server)[before:]

    deadline = time.monotonic() + 10
    while len(new_lines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = new_lines()
    assert [(r["method"], r["path"], r["status"]) for r in lines] == [
        ("GET", "/jobs", 200),
        ("POST", "/sync", 400),
        ("POST", "/sync", 413),
    ]
    assert lines[0]["bytes"] == len(listed.content)
    assert lines[1]["bytes"] == len(refused.content)
    assert all(r["duration_ms"] >= 0 for r in lines[:2])
    assert lines[2]["refused_by"] == "waitress"
    text = server.log_text()
    for secret in (marker, WINDMILL_TOKEN, GIT_TOKEN):
        assert secret not in text


def test_waitress_warnings_reach_the_json_log(
    windmill: WindmillEmulator, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    # One thread: a sync held at Windmill makes /health queue behind it.
    solo = start_service(
        tmp_path, windmill, ca_pem, HTTP_THREADS="1", RETRY_ATTEMPTS="1", LOG_LEVEL="INFO"
    )
    target = new_target(windmill, git_server)
    windmill.set_fault("tarball", "delay:3", workspace=target.workspace_id)
    try:
        sync = _in_background(lambda: solo.post("/sync", target.body(), timeout=120))
        time.sleep(1)  # the sync holds the only thread (the pull takes 3 s and more)
        assert requests.get(solo.url + "/health", timeout=30).status_code == 200
        assert sync.result(timeout=120).status_code == 200
    finally:
        windmill.set_fault("tarball", None, workspace=target.workspace_id)
        solo.stop()
    records = [json.loads(line) for line in solo.log_text().splitlines() if line.startswith("{")]
    queued = [r for r in records if r["logger"] == "waitress.queue"]
    assert queued and queued[0]["level"] == "warning", records[-5:]
    assert "Task queue depth" in queued[0]["message"]


# -- /health under load ------------------------------------------------------------------


def _in_background(fn: Any) -> Future[Any]:
    future: Future[Any] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed over through the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _wait_for(predicate: Any, what: str, timeout: float = 60) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class SlowClients:
    """Connections that send a request one byte at a time and never finish it."""

    def __init__(self, url: str, count: int) -> None:
        self.socks = [connect(url) for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        offset = 0
        while not self._stop.wait(0.5):  # well inside IDLE_CONNECTION_TIMEOUT
            for sock in self.socks:
                sock.send(request[offset : offset + 1])
            offset += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def test_health_answers_within_a_second_with_syncs_running_and_queued_and_slow_clients(
    server: ServiceProcess, windmill: WindmillEmulator, git_server: GitHttpServer
) -> None:
    targets = [new_target(windmill, git_server) for _ in range(CONCURRENT + QUEUED)]
    for target in targets:
        windmill.set_fault("tarball", "delay:12", workspace=target.workspace_id)
    slow = SlowClients(server.url, 200)
    try:

        def gauges(queued: int, running: int) -> bool:
            text = requests.get(server.url + "/metrics", timeout=10).text
            return (
                f"windmill_git_sync_queue_depth {float(queued)}" in text
                and f"windmill_git_sync_in_flight {float(running)}" in text
            )

        def post(target: Target) -> Future[requests.Response]:
            return _in_background(lambda: server.post("/sync", target.body(), timeout=180))

        # Running first: a run not yet picked up by a sync thread counts as queued.
        syncs = [post(t) for t in targets[:CONCURRENT]]
        _wait_for(lambda: gauges(0, CONCURRENT), "every sync slot taken")
        syncs += [post(t) for t in targets[CONCURRENT:]]
        _wait_for(lambda: gauges(QUEUED, CONCURRENT), "the queue full")
        extra = new_target(windmill, git_server)
        busy = requests.post(server.url + "/sync", json=extra.body(), timeout=10)
        assert busy.status_code == 503 and busy.json()["error"] == "busy"

        slowest = 0.0
        for _ in range(10):
            start = time.monotonic()
            response = requests.get(server.url + "/health", timeout=5)
            slowest = max(slowest, time.monotonic() - start)
            assert response.status_code == 200
            time.sleep(0.1)
        assert slowest < 1.0, f"/health took {slowest:.2f} s"
    finally:
        slow.close()
        for target in targets:
            windmill.set_fault("tarball", None, workspace=target.workspace_id)
    for sync in syncs:
        assert sync.result(timeout=180).status_code == 200
