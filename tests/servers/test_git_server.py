"""The loopback Git server and the /proc scanner, driven by the real ``git`` CLI.

Every git child gets an environment built from scratch and receives the token
only through a credential helper injected with GIT_CONFIG_COUNT (never a URL,
argv or env var), exactly as the service must do it. Every subprocess has a
timeout and runs in its own session, so a failing test cannot hang or leave
a ``git-remote-https`` behind.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import requests
import trustme

from tests.servers.git_server import GitHttpServer, Symlink, clone_and_commit
from tests.servers.proc_scan import ProcScanner, needles_for, scan_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
USERNAME = "x-access-token"
AUTHOR = {
    "GIT_AUTHOR_NAME": "Sync Bot",
    "GIT_AUTHOR_EMAIL": "bot@example.com",
    "GIT_COMMITTER_NAME": "Sync Bot",
    "GIT_COMMITTER_EMAIL": "bot@example.com",
}


def new_token() -> str:
    # Random per test: the scanner sees every process on the machine, so fixed
    # tokens could match some other test run's processes.
    return "ghp_" + secrets.token_urlsafe(24)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 60,
    expect_timeout: bool = False,
) -> Result:
    """Run a child in its own session; on timeout kill the whole group (git-remote-https too)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        if not expect_timeout:
            raise AssertionError(f"{argv[:3]} still running after {timeout}s") from None
        return Result(-9, out.decode(errors="replace"), err.decode(errors="replace"), timeout)
    return Result(
        proc.returncode,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - start,
    )


class GitClient:
    """The real git CLI, configured the way the service configures it."""

    def __init__(self, base: Path, ca_pem: Path, origin: str) -> None:
        self.base = base
        self.home = base / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.ca_pem = ca_pem
        self.origin = origin  # https://host:port, the credential context
        self.cred_file = base / "credential"
        self.token: str | None = None

    def use_token(self, token: str | None, username: str = USERNAME) -> None:
        self.token = token
        if token is None:
            self.cred_file.unlink(missing_ok=True)
            return
        fd = os.open(self.cred_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"username={username}\npassword={token}\n")

    def env(self, config: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
        entries: list[tuple[str, str]] = [("credential.helper", "")]  # reset any storing helper
        if self.token is not None:
            # The helper prints a file: the token is in neither argv nor environ.
            helper = f"!f() {{ test \"$1\" = get && cat '{self.cred_file}'; }}; f"
            entries.append((f"credential.{self.origin}.helper", helper))
        entries += list((config or {}).items())
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_SSL_CAINFO": str(self.ca_pem),
            "GIT_CONFIG_COUNT": str(len(entries)),
            **AUTHOR,
        }
        for i, (key, value) in enumerate(entries):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        env.update(extra)
        return env

    def git(
        self,
        *args: str,
        cwd: Path | None = None,
        config: Mapping[str, str] | None = None,
        timeout: float = 60,
        expect_timeout: bool = False,
        **extra_env: str,
    ) -> Result:
        return run(
            ["git", *args],
            env=self.env(config, **extra_env),
            cwd=cwd,
            timeout=timeout,
            expect_timeout=expect_timeout,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> Result:
        result = self.git(*args, cwd=cwd)
        assert result.returncode == 0, f"git {args[0]} failed: {result.stderr}"
        return result

    def new_worktree(self, name: str, files: Mapping[str, bytes], message: str = "commit") -> Path:
        """A local repository with one commit of ``files`` on ``main``."""
        work = self.base / name
        self.ok("init", "--quiet", "--initial-branch=main", str(work))
        for rel, content in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(content)
        self.ok("add", "--all", cwd=work)
        self.ok("commit", "--quiet", "-m", message, cwd=work)
        return work

    def head(self, work: Path, ref: str = "HEAD") -> str:
        return self.ok("rev-parse", ref, cwd=work).stdout.strip()


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_ca_pem(tls_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def token() -> str:
    return new_token()


@pytest.fixture
def server(tls_ca: trustme.CA, tmp_path: Path, token: str) -> Iterator[GitHttpServer]:
    # One server per test: modes and tokens never bleed between tests.
    with GitHttpServer(tmp_path / "srv", token=token, ca=tls_ca) as srv:
        yield srv


@pytest.fixture
def client(tmp_path: Path, tls_ca_pem: Path, server: GitHttpServer, token: str) -> GitClient:
    cli = GitClient(tmp_path / "client", tls_ca_pem, server.base_url)
    cli.use_token(token)
    return cli


def assert_no_token(server: GitHttpServer, token: str) -> None:
    text = repr(server.requests).encode()
    assert not [n for n in needles_for(token, USERNAME) if n in text]


# -- basic protocol ------------------------------------------------------------------


def test_clone_of_empty_repository(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("empty")

    result = client.git("clone", server.url("empty"), str(client.base / "c"))

    assert result.returncode == 0, result.stderr
    assert "You appear to have cloned an empty repository" in result.stderr
    assert (client.base / "c" / ".git").is_dir()
    assert server.log("empty") == []
    # First request is unauthenticated (git only sends credentials after a 401).
    first, second = server.requests[:2]
    assert (first.status, first.authorized, first.username) == (401, False, None)
    assert (second.status, second.authorized, second.username) == (200, True, USERNAME)
    assert second.service == "git-upload-pack"


def test_push_then_fetch_back(server: GitHttpServer, client: GitClient, token: str) -> None:
    server.create_repo("r")
    work = client.new_worktree("w", {"a.txt": b"alpha\n", "dir/b.bin": bytes(range(256))})
    commit = client.head(work)

    push = client.git("push", server.url("r"), "HEAD:refs/heads/main", cwd=work)

    assert push.returncode == 0, push.stderr
    assert server.log("r") == [commit]
    assert server.read_tree("r") == {"a.txt": b"alpha\n", "dir/b.bin": bytes(range(256))}
    posts = server.receive_pack_posts("r")
    assert len(posts) == 1
    assert (posts[0].status, posts[0].authorized, posts[0].username) == (200, True, USERNAME)
    assert server.receive_pack_posts("other") == []

    clone = client.git("clone", "--quiet", server.url("r"), str(client.base / "c"))
    assert clone.returncode == 0, clone.stderr
    assert client.head(client.base / "c") == commit
    assert (client.base / "c" / "a.txt").read_bytes() == b"alpha\n"

    # A human pushes behind our back; a fetch brings it in.
    human = server.clone_and_commit("r", {"README.md": b"hello\n"}, "docs")
    fetch = client.git("fetch", "--quiet", "origin", cwd=client.base / "c")
    assert fetch.returncode == 0, fetch.stderr
    assert client.head(client.base / "c", "origin/main") == human
    assert server.parent_of("r", human) == commit
    assert_no_token(server, token)


def test_wrong_token_fails_with_authentication_failed(
    server: GitHttpServer, client: GitClient, token: str
) -> None:
    server.create_repo("r")
    work = client.new_worktree("w", {"a": b"a"})
    wrong = new_token()
    client.use_token(wrong)

    push = client.git("push", server.url("r"), "HEAD:refs/heads/main", cwd=work)

    assert push.returncode == 128
    assert f"Authentication failed for '{server.url('r')}/'" in push.stderr
    assert server.log("r") == []
    assert server.receive_pack_posts("r") == []
    tried = [r for r in server.requests if r.username == USERNAME]
    assert tried and all(r.status == 401 and not r.authorized for r in tried)
    assert_no_token(server, wrong)
    assert_no_token(server, token)
    assert wrong not in push.stderr


def test_unauthenticated_requests_get_a_basic_challenge(
    server: GitHttpServer, client: GitClient, tls_ca_pem: Path, token: str
) -> None:
    server.create_repo("r")
    url = server.url("r") + "/info/refs?service=git-upload-pack"

    anonymous = requests.get(url, verify=str(tls_ca_pem), timeout=10)
    bearer = requests.get(
        url, verify=str(tls_ca_pem), timeout=10, headers={"Authorization": f"Bearer {token}"}
    )
    empty_user = requests.get(url, verify=str(tls_ca_pem), timeout=10, auth=("", token))
    token_as_user = requests.get(url, verify=str(tls_ca_pem), timeout=10, auth=(token, "x"))
    good = requests.get(url, verify=str(tls_ca_pem), timeout=10, auth=("anyone", token))

    for response in (anonymous, bearer, empty_user, token_as_user):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="git"'
    assert good.status_code == 200
    assert good.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
    log = server.requests
    assert [r.auth_scheme for r in log] == [None, "bearer", "basic", "basic", "basic"]
    assert [r.username for r in log] == [None, None, None, "<token>", "anyone"]
    assert_no_token(server, token)

    # git without any credential: the 401 makes it ask, and prompting is off.
    client.use_token(None)
    result = client.git("ls-remote", server.url("r"))
    assert result.returncode == 128
    assert "could not read Username" in result.stderr


def test_missing_repository_is_404_after_auth(server: GitHttpServer, client: GitClient) -> None:
    result = client.git("ls-remote", server.url("nope"))

    assert result.returncode == 128
    assert f"repository '{server.url('nope')}/' not found" in result.stderr
    assert [r.status for r in server.requests] == [401, 404]


def test_token_rotation(server: GitHttpServer, client: GitClient, token: str) -> None:
    server.create_repo("r")
    assert client.git("ls-remote", server.url("r")).returncode == 0

    rotated = new_token()
    server.token = rotated
    old = client.git("ls-remote", server.url("r"))
    client.use_token(rotated)
    new = client.git("ls-remote", server.url("r"))

    assert old.returncode == 128 and "Authentication failed" in old.stderr
    assert new.returncode == 0, new.stderr
    assert_no_token(server, token)
    assert_no_token(server, rotated)


@pytest.mark.parametrize("version", ["0", "1", "2"])
def test_protocol_versions(server: GitHttpServer, client: GitClient, version: str) -> None:
    server.create_repo("r")
    commit = server.clone_and_commit("r", {"f": b"x"}, "seed")

    result = client.git("ls-remote", server.url("r"), config={"protocol.version": version})

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [commit, "refs/heads/main"] or commit in result.stdout
    # The Git-Protocol header reaches http-backend as GIT_PROTOCOL.
    expected = None if version == "0" else f"version={version}"
    assert {r.protocol for r in server.requests} == {expected}


# -- large and compressed bodies ------------------------------------------------------


def test_large_push_is_chunked_and_large_clone_streams(
    server: GitHttpServer, client: GitClient
) -> None:
    server.create_repo("big")
    blob = os.urandom(6 * 1024 * 1024)  # incompressible, far above http.postBuffer (1 MiB)
    work = client.new_worktree("w", {"big.bin": blob, "small.txt": b"s\n"})

    push = client.git("push", server.url("big"), "HEAD:refs/heads/main", cwd=work, timeout=120)

    assert push.returncode == 0, push.stderr
    posts = server.receive_pack_posts("big")
    assert len(posts) == 1 and posts[0].chunked and posts[0].status == 200
    # git sent its data-less probe first; it is logged but not counted as a push.
    assert len(server.receive_pack_posts("big", include_probes=True)) == 2
    assert server.read_tree("big")["big.bin"] == blob

    clone = client.git("clone", "--quiet", server.url("big"), str(client.base / "c"), timeout=120)
    assert clone.returncode == 0, clone.stderr
    assert (client.base / "c" / "big.bin").read_bytes() == blob


def test_gzip_request_bodies_are_understood(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("r")
    server.clone_and_commit("r", {"f": b"0"}, "seed")
    assert client.git("clone", "--quiet", server.url("r"), str(client.base / "c")).returncode == 0
    work = client.base / "c"
    # Many local commits the server does not have: the fetch negotiation lists
    # them as "have" lines, and git gzips request bodies above 1 KiB.
    # Dated in the future: git offers "have"s newest first, and a common commit
    # from the same second could otherwise end the negotiation in one small round.
    for i in range(60):
        date = f"@{4102444800 + i} +0000"
        commit = client.git(
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            f"local {i}",
            cwd=work,
            GIT_COMMITTER_DATE=date,
            GIT_AUTHOR_DATE=date,
        )
        assert commit.returncode == 0, commit.stderr
    remote_new = server.clone_and_commit("r", {"g": b"1"}, "remote")
    server.clear_requests()

    fetch = client.git("fetch", "--quiet", "origin", cwd=work, config={"protocol.version": "0"})

    assert fetch.returncode == 0, fetch.stderr
    assert client.head(work, "origin/main") == remote_new
    assert any(
        r.service == "git-upload-pack" and r.method == "POST" and r.content_encoding == "gzip"
        for r in server.requests
    )


# -- failure modes -------------------------------------------------------------------------


def test_down_mode_closes_connections(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("r")
    server.mode = "down"

    result = client.git("ls-remote", server.url("r"), timeout=30)

    assert result.returncode == 128
    assert f"unable to access '{server.url('r')}/'" in result.stderr
    assert result.elapsed < 10
    assert server.dropped_connections >= 1
    assert server.requests == []


def test_error500_mode(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("r")
    server.mode = "error500"

    result = client.git("ls-remote", server.url("r"))

    assert result.returncode == 128
    assert "The requested URL returned error: 500" in result.stderr
    assert [r.status for r in server.requests] == [500]


def test_blackhole_mode_trips_git_low_speed_limit(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("r")
    server.mode = "blackhole"

    result = client.git(
        "ls-remote",
        server.url("r"),
        timeout=30,
        GIT_HTTP_LOW_SPEED_LIMIT="1000",
        GIT_HTTP_LOW_SPEED_TIME="2",
    )

    assert result.returncode == 128
    assert "Operation too slow" in result.stderr
    assert 1.5 < result.elapsed < 15
    assert [r.status for r in server.requests] == [None]  # seen, never answered


def test_blackhole_without_low_speed_limit_needs_a_hard_timeout(
    server: GitHttpServer, client: GitClient
) -> None:
    server.create_repo("r")
    server.mode = "blackhole"

    result = client.git("ls-remote", server.url("r"), timeout=3, expect_timeout=True)

    assert result.returncode == -9
    # Leaving blackhole mode releases the stuck request thread.
    server.mode = "normal"
    assert client.git("ls-remote", server.url("r")).returncode == 0


def test_slow_mode_delays_every_answer(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("r")
    server.mode = "slow"
    server.delay = 0.6

    result = client.git("ls-remote", server.url("r"))

    assert result.returncode == 0, result.stderr
    # The 401 challenge, the advertisement, then the protocol v2 ls-refs command.
    assert [r.status for r in server.requests] == [401, 200, 200]
    assert result.elapsed >= 0.6 * 3


def test_redirect_is_answered_302_and_credentials_stay_home(
    server: GitHttpServer, client: GitClient, tls_ca: trustme.CA, tmp_path: Path, token: str
) -> None:
    with GitHttpServer(tmp_path / "other", token=token, ca=tls_ca, host="localhost") as other:
        other.create_repo("r")
        server.redirect_to = other.base_url

        refused = client.git("ls-remote", server.url("r"), config={"http.followRedirects": "false"})
        assert refused.returncode == 128
        assert "The requested URL returned error: 302" in refused.stderr
        assert other.requests == []

        followed = client.git("ls-remote", server.url("r"))
        # The helper is scoped to the first origin, so git has nothing to send the other host.
        assert followed.returncode == 128
        assert "could not read Username for 'https://localhost:" in followed.stderr
        assert other.requests and all(r.auth_scheme is None for r in other.requests)
        assert other.requests[0].host == f"localhost:{other.port}"
        assert {r.status for r in server.requests} == {302}


def test_concurrent_pushes(server: GitHttpServer, client: GitClient) -> None:
    repos = [f"par{i}" for i in range(10)]
    for name in [*repos, "shared", "race"]:
        server.create_repo(name)
    jobs: list[tuple[str, str, Path]] = []  # (repo, branch, worktree)
    for i, name in enumerate(repos):
        jobs.append((name, "main", client.new_worktree(f"w{i}", {"n": str(i).encode()})))
    for i in range(8):
        jobs.append(("shared", f"b{i}", client.new_worktree(f"s{i}", {"n": str(i).encode()})))
    racers = [client.new_worktree(f"r{i}", {"n": str(i).encode()}) for i in range(4)]

    def push(job: tuple[str, str, Path]) -> tuple[int, str]:
        repo, branch, work = job
        result = client.git(
            "push", "--quiet", server.url(repo), f"HEAD:refs/heads/{branch}", cwd=work
        )
        return result.returncode, result.stderr

    with concurrent.futures.ThreadPoolExecutor(len(jobs) + len(racers)) as pool:
        outcomes = list(pool.map(push, jobs + [("race", "main", w) for w in racers]))

    assert [rc for rc, _ in outcomes[: len(jobs)]] == [0] * len(jobs), outcomes
    for repo, branch, work in jobs:
        assert server.log(repo, branch) == [client.head(work)]
    # Unrelated histories racing for one branch: receive-pack's compare-and-swap
    # lets exactly one win, and the branch is that winner's commit.
    race = outcomes[len(jobs) :]
    winners = [w for w, (rc, _) in zip(racers, race, strict=True) if rc == 0]
    assert len(winners) == 1, race
    assert server.log("race") == [client.head(winners[0])]
    assert len(server.receive_pack_posts()) >= len(jobs) + 1


def test_stop_does_not_hang_on_stuck_or_idle_clients(
    tls_ca: trustme.CA, tmp_path: Path, client: GitClient, token: str
) -> None:
    srv = GitHttpServer(tmp_path / "s", token=token, ca=tls_ca).start()
    srv.create_repo("r")
    srv.mode = "blackhole"
    cli = GitClient(tmp_path / "c", client.ca_pem, srv.base_url)
    cli.use_token(token)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(cli.git, "ls-remote", srv.url("r"), timeout=30)
        deadline = time.monotonic() + 10
        while not srv.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.monotonic()
        srv.stop()
        stopped_in = time.monotonic() - start
        result = pending.result()
    assert stopped_in < 5
    assert result.returncode == 128
    assert result.elapsed < 15


# -- helpers on disk ----------------------------------------------------------------------------


def test_clone_and_commit_log_and_read_tree(server: GitHttpServer, client: GitClient) -> None:
    path = server.create_repo("r")
    assert path == server.repo_path("r") and (path / "HEAD").is_file()

    first = server.clone_and_commit(
        server.url("r"), {"a.txt": b"one\n", "d/e/f.bin": b"\x00\xff"}, "first"
    )
    second = clone_and_commit(
        path, {"a.txt": None, "b.txt": b"two\n"}, "second", author=("Ada", "ada@example.com")
    )

    assert server.log("r") == [second, first]
    assert server.parent_of("r", second) == first and server.parent_of("r", first) is None
    assert server.read_tree("r") == {"b.txt": b"two\n", "d/e/f.bin": b"\x00\xff"}
    assert server.read_tree("r", first) == {"a.txt": b"one\n", "d/e/f.bin": b"\x00\xff"}
    assert b"\nauthor Ada <ada@example.com> " in server.cat_commit("r", second)
    # New branches: forked from a base, or a root commit without one.
    side = server.clone_and_commit("r", {"x": b"x"}, "side", branch="side", base="main")
    assert server.log("r", "side") == [side, second, first]
    orphan = server.clone_and_commit("r", {"y": b"y"}, "orphan", branch="orphan")
    assert server.log("r", "orphan") == [orphan]
    assert server.read_tree("r", "orphan") == {"y": b"y"}
    assert server.log("r", "missing") == [] and server.ref("r", "missing") is None
    # On-disk helpers never touch the network.
    assert server.requests == []


def test_read_tree_reports_symlinks_distinctly(server: GitHttpServer, client: GitClient) -> None:
    server.create_repo("r")
    work = client.new_worktree("w", {"target.txt": b"/etc/passwd"})
    (work / "link").symlink_to("/etc/passwd")
    client.ok("add", "link", cwd=work)
    client.ok("commit", "--quiet", "-m", "link", cwd=work)
    client.ok("push", "--quiet", server.url("r"), "HEAD:refs/heads/main", cwd=work)

    tree = server.read_tree("r")

    assert tree["link"] == Symlink(b"/etc/passwd")
    assert tree["link"] != b"/etc/passwd" and b"/etc/passwd" != tree["link"]
    assert tree["target.txt"] == b"/etc/passwd" and not isinstance(tree["target.txt"], Symlink)
    assert tree != {"link": b"/etc/passwd", "target.txt": b"/etc/passwd"}


# -- the /proc scanner -------------------------------------------------------------------------


def test_needles_for_covers_raw_urlencoded_and_basic_forms() -> None:
    needles = needles_for("ab/c+d=", "alice")

    assert needles[0] == b"ab/c+d="
    assert b"ab%2Fc%2Bd%3D" in needles
    for user in ("git", "x-access-token", "oauth2", "x-token-auth", "pat", "alice"):
        assert base64.b64encode(f"{user}:ab/c+d=".encode()) in needles
    assert len(needles) == len(set(needles))


def test_scanner_finds_a_needle_in_argv(tmp_path: Path) -> None:
    token = new_token()
    needle = base64.b64encode(f"git:{token}".encode())  # a derived form, not just the raw token
    with ProcScanner(needles_for(token)) as scanner:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(10)", needle.decode()],
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while not scanner.hits() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait(10)
        hits = scanner.stop()

    exe = os.path.basename(sys.executable)
    assert {(h.pid, h.where, h.exe) for h in hits} == {(proc.pid, "cmdline", exe)}
    # base64("git:" + token) also contains base64(":" + token): "git" is 3 bytes,
    # so both encodings line up. Both needles hit; the one we planted must be among them.
    assert needles_for(token).index(needle) in {h.needle for h in hits}
    assert token not in repr(hits) and needle.decode() not in repr(hits)


def test_scanner_finds_a_needle_in_a_git_environment(tmp_path: Path) -> None:
    token = new_token()
    with ProcScanner(needles_for(token)) as scanner:
        # git hash-object --stdin waits on its stdin: a git process holding the token in env.
        proc = subprocess.Popen(
            ["git", "hash-object", "--stdin"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LEAKY": token},
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 5
            while not scanner.hits() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.communicate(b"x", timeout=10)
        hits = scanner.stop()

    assert [(h.pid, h.where, h.exe) for h in hits] == [(proc.pid, "environ", "git")]


def test_scanner_finds_nothing_during_an_authenticated_push(
    server: GitHttpServer, client: GitClient, token: str
) -> None:
    server.create_repo("r")
    work = client.new_worktree("w", {"a": b"a"})
    # Slow answers keep git and git-remote-https alive for many sweeps.
    server.mode = "slow"
    server.delay = 0.3

    with ProcScanner(needles_for(token, USERNAME)) as scanner:
        push = client.git("push", server.url("r"), "HEAD:refs/heads/main", cwd=work)
        hits = scanner.stop()

    assert push.returncode == 0, push.stderr
    assert server.log("r") == [client.head(work)]
    assert hits == []
    # Proof the scanner was looking: many sweeps, and it read git-remote-https's environ.
    assert scanner.sweeps > 50
    assert "git-remote-https" in scanner.environ_seen
    # Nothing the client keeps on disk holds the token either.
    assert scan_tree(client.home, needles_for(token)) == []
    assert scan_tree(work, needles_for(token)) == []
    assert scan_tree(server.root, needles_for(token)) == []


def test_scan_tree(tmp_path: Path) -> None:
    token = new_token()
    needles = needles_for(token)
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "ok.txt").write_bytes(b"nothing here")
    (tmp_path / "raw.txt").write_text(f"password={token}\n")
    (tmp_path / "b64.log").write_bytes(b"Authorization: Basic " + needles_for(token)[2])
    (tmp_path / "big.bin").write_bytes(b"\0" * ((1 << 20) - 5) + token.encode())  # spans blocks
    (tmp_path / f"named-{token}").write_bytes(b"")
    (tmp_path / "link").symlink_to(f"/nonexistent/{token}")
    (tmp_path / "dirlink").symlink_to(tmp_path / "clean")

    found = scan_tree(tmp_path, needles)

    assert found == sorted(
        tmp_path / name for name in ("raw.txt", "b64.log", "big.bin", f"named-{token}", "link")
    )
    assert scan_tree(tmp_path / "clean", needles) == []


# -- standalone ------------------------------------------------------------------------------


def _line_reader(stream: IO[str]) -> queue.Queue[str]:
    """Lines from a child's stdout through a thread, so waiting for one can time out."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_standalone_server(tmp_path: Path) -> None:
    token, rotated = new_token(), new_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.servers.git_server",
            "--root",
            str(tmp_path / "root"),
            "--token-file",
            str(token_file),
            "--cert-dir",
            str(tmp_path / "certs"),
            "--create-repo",
            "r",
        ],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = _line_reader(proc.stdout)
        ca_line = lines.get(timeout=30)
        ready_line = lines.get(timeout=30)
        assert ca_line == f"CA {tmp_path / 'certs' / 'ca.pem'}"
        assert ready_line.startswith("READY https://127.0.0.1:")
        base = ready_line.removeprefix("READY ")
        cli = GitClient(tmp_path / "client", Path(ca_line.removeprefix("CA ")), base)
        cli.use_token(token)
        commit = clone_and_commit(tmp_path / "root" / "r.git", {"f": b"x"}, "seed")
        listing = cli.git("ls-remote", f"{base}/r.git")
        assert listing.returncode == 0, listing.stderr
        assert commit in listing.stdout

        # SIGHUP re-reads the token file.
        token_file.write_text(rotated + "\n")
        os.kill(proc.pid, signal.SIGHUP)
        cli.use_token(rotated)
        deadline = time.monotonic() + 10
        while cli.git("ls-remote", f"{base}/r.git").returncode != 0:
            assert time.monotonic() < deadline, "SIGHUP did not rotate the token"
            time.sleep(0.1)
        cli.use_token(token)
        assert cli.git("ls-remote", f"{base}/r.git").returncode == 128

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
