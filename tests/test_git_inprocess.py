"""Git runs inside the service (dulwich): no git process, nothing ambient, every bound held.

Each test drives the real service against the real HTTPS Git server
(``git http-backend``); real ``git`` only verifies, from outside, what the
server's repository holds (``git fsck --strict`` among others).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.git.repo import MAX_PACKS
from gitsync.inputs.requests import parse_sync_request
from gitsync.windmill.wmill import Scope
from tests.conftest import Target, files_under, made, new_target, plain_pull, start_service
from tests.servers.git_server import GitHttpServer
from tests.servers.service_process import ServiceProcess

# -- helpers -------------------------------------------------------------------------------


def _ancestors(pid: int) -> Iterator[int]:
    while pid > 1:
        yield pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])


class GitProcessWatch:
    """Samples /proc for any process named git* that descends from a given process."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.seen: set[tuple[int, str]] = set()
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    comm = Path(f"/proc/{entry}/comm").read_text().strip()
                except OSError:
                    continue
                if comm.startswith("git") and self.root_pid in _ancestors(int(entry)):
                    self.seen.add((int(entry), comm))
            self.sweeps += 1
            time.sleep(0.002)

    def __enter__(self) -> GitProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def service_rss_peak(service: ServiceProcess) -> int:
    """Peak resident memory (bytes) of the service's Python processes."""
    assert service.proc is not None
    peak = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != service.proc.pid:
                continue
            if "python" not in os.readlink(f"/proc/{entry}/exe"):
                continue  # the wmill CLI (node) is not the service
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) * 1024)
    return peak


@contextlib.contextmanager
def own_service(
    tmp_path: Path, windmill, ca_pem: Path | None, **env: str
) -> Iterator[ServiceProcess]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = start_service(tmp_path, windmill, ca_pem, **env)
    try:
        yield proc
    finally:
        proc.stop()


# -- no git process, no git on PATH ----------------------------------------------------------


def test_the_whole_git_path_runs_without_a_git_binary(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    # A PATH holding node (for the wmill CLI) and nothing else: no git to find.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    node = shutil.which("node")
    assert node is not None
    (bin_dir / "node").symlink_to(node)
    assert shutil.which("git", path=str(bin_dir)) is None
    target = new_target(windmill, git_server)
    with own_service(tmp_path / "svc", windmill, ca_pem, PATH=str(bin_dir)) as service:
        assert service.proc is not None
        with GitProcessWatch(service.proc.pid) as watch:
            first = service.post("/sync", target.body())
            assert first.status_code == 200, first.text
            # A person's commit on the remote: the next sync fetches it and builds on it.
            human = git_server.clone_and_commit(target.repo, {"docs/notes.md": b"hi\n"}, "notes")
            target.workspace.add_script("f/team/second", language="bash", content="echo 2\n")
            second = service.post("/sync", target.body())
            assert second.status_code == 200, second.text
            assert service.post("/sync", target.body()).json()["changed"] is False
            history = service.get(
                "/history",
                params={
                    "workspace": target.workspace_id,
                    "git_remote_url": target.remote_url,
                    "path": "f/team/second",
                },
            )
            assert history.status_code == 200, history.text
            restore = service.post(
                "/restore",
                {
                    "windmill_token": target.body()["windmill_token"],
                    "git_remote_url": target.remote_url,
                    "git_token": target.body()["git_token"],
                    "workspace": target.workspace_id,
                    "git_ref": "main",
                },
            )
            assert restore.status_code == 200, restore.text
            ready = service.get("/ready")
            assert ready.status_code == 200, ready.text
    assert watch.sweeps > 10
    assert watch.seen == set(), f"git processes started by the service: {watch.seen}"
    log = target.log()
    assert log[0] == second.json()["commit"] and human in log
    assert target.git_server.parents(target.repo, log[0]) == [human]
    assert [c["commit"] for c in history.json()["commits"]] == [second.json()["commit"]]
    assert "f/team/second.sh" in target.tree() and "docs/notes.md" in target.tree()
    git_server.fsck(target.repo)


# -- hostile or odd servers ------------------------------------------------------------------


def test_a_server_answering_as_dumb_http_is_refused(
    service: ServiceProcess, target: Target, git_server: GitHttpServer
) -> None:
    assert service.post("/sync", target.body()).status_code == 200
    target.workspace.add_script("f/team/dumb", language="bash", content="echo d\n")
    before = target.log()
    git_server.clear_requests()
    git_server.mode = "dumb"
    try:
        response = service.post("/sync", target.body())
    finally:
        git_server.mode = "normal"
    assert response.status_code == 500
    assert response.json()["error"] == "git_failed"
    assert "smart HTTP" in response.json()["message"]
    # Refused at discovery: no object fetched file by file, nothing pushed.
    paths = {r.path for r in git_server.requests if r.repo == target.repo}
    assert paths == {f"/{target.repo}.git/info/refs"}
    assert target.log() == before


@pytest.mark.parametrize("misbehaviour", ["stall_pack", "trickle"])
def test_a_fetch_stalled_or_trickling_mid_pack_ends_within_sync_timeout(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path, misbehaviour: str
) -> None:
    target = new_target(windmill, git_server)
    # Something on the remote that this (new) service does not have: a real pack to send.
    git_server.clone_and_commit(
        target.repo, {"docs/big.txt": os.urandom(200_000).hex().encode()}, "x"
    )
    sync_timeout = 12
    with own_service(
        tmp_path, windmill, ca_pem, SYNC_TIMEOUT=str(sync_timeout), RETRY_ATTEMPTS="1"
    ) as service:
        git_server.stall_after, git_server.delay = 300, 0.5
        git_server.mode = misbehaviour
        try:
            started = time.monotonic()
            response = service.post("/sync", target.body(), timeout=120)
            took = time.monotonic() - started
        finally:
            git_server.mode, git_server.delay = "normal", 0.0
        assert response.status_code == 500, response.text
        assert response.json()["error"] == "timeout", response.json()
        assert "Git fetch" in response.json()["message"]
        assert took < sync_timeout + 5, took
        # The next sync, with the server behaving, works from the same copy.
        recovered = service.post("/sync", target.body())
        assert recovered.status_code == 200, recovered.text
    git_server.fsck(target.repo)


def test_max_fetch_bytes_bounds_a_fetch_and_stores_nothing(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    # Incompressible, and under the blob size a sync fetches: it must come over the wire.
    git_server.clone_and_commit(target.repo, {"docs/noise.bin": os.urandom(400_000)}, "noise")
    with own_service(tmp_path, windmill, ca_pem, MAX_FETCH_BYTES="100000") as service:
        response = service.post("/sync", target.body())
        assert response.status_code == 500
        assert "MAX_FETCH_BYTES" in response.json()["message"]
        assert response.json()["error"] == "git_failed"
        objects = next(service.data_dir.glob("targets/*/repo.git/objects"))
        assert not list((objects / "pack").iterdir())
        assert not list(objects.glob("tmp*")) and not list(objects.glob("incoming-*"))
    assert len(target.log()) == 1


def test_a_zip_bomb_blob_never_reaches_the_service(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    # 400 MiB of zeros: a few hundred kB on the wire, all of it in memory if inflated.
    bomb = git_server.clone_and_commit(target.repo, {"bomb.bin": bytes(400 * 2**20)}, "bomb")
    with own_service(tmp_path, windmill, ca_pem) as service:
        response = service.post("/sync", target.body())
        assert response.status_code == 200, response.text
        peak = service_rss_peak(service)
    assert peak < 150 * 2**20, f"service peak RSS {peak / 2**20:.0f} MiB"
    ours = made(response.json())
    assert target.log()[: len(ours) + 1] == [*ours, bomb]
    # Built on the bomb's commit without ever holding the blob: it is still in the tree.
    assert git_server.parents(target.repo, ours[-1]) == [bomb]
    listing = subprocess.run(
        ["git", "--git-dir", str(git_server.repo_path(target.repo)), "ls-tree", "main", "bomb.bin"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert listing.endswith(b"\tbomb.bin\n")
    git_server.fsck(target.repo)


# -- ambient configuration ---------------------------------------------------------------------


def _ambient(home: Path, dead: str) -> dict[str, str]:
    """Every way git's (and dulwich porcelain's) ambient configuration could steer a client."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".gitconfig").write_text(
        f'[url "{dead}/"]\n\tinsteadOf = https://127.0.0.1\n'
        f"[http]\n\tproxy = {dead}\n\tsslVerify = false\n"
        "[init]\n\tdefaultBranch = ambient\n"
        "[credential]\n\thelper = store\n"
    )
    xdg = home / "xdg"
    (xdg / "git").mkdir(parents=True)
    (xdg / "git" / "config").write_text("[broken\n")  # a syntax error in the ambient config
    system = home / "system-gitconfig"
    system.write_text(f'[url "{dead}/"]\n\tinsteadOf = https://\n')
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(xdg),
        "GIT_CONFIG_SYSTEM": str(system),
        "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.sslVerify",
        "GIT_CONFIG_VALUE_0": "false",
        "GIT_SSL_NO_VERIFY": "1",
        "https_proxy": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "ALL_PROXY": dead,
        "no_proxy": "",
    }


def test_ambient_git_configuration_and_proxies_change_nothing(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    env = _ambient(tmp_path / "home", "http://127.0.0.1:9")
    with own_service(tmp_path / "svc", windmill, ca_pem, **env) as service:
        response = service.post("/sync", target.body())
        assert response.status_code == 200, response.text
        head = next(service.data_dir.glob("targets/*/repo.git/HEAD")).read_text()
    assert target.log() == made(response.json())  # one commit per author, nothing else
    assert head == "ref: refs/heads/main\n"
    assert not (tmp_path / "home" / ".git-credentials").exists()
    git_server.fsck(target.repo)


def test_tls_verification_is_never_off(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    target = new_target(windmill, git_server)
    wrong_ca = tmp_path / "wrong-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(wrong_ca))
    env = _ambient(tmp_path / "home", "http://127.0.0.1:9")
    # The right CA offered through OpenSSL's own variables must not rescue it either.
    env.update(SSL_CERT_FILE=str(ca_pem), REQUESTS_CA_BUNDLE=str(ca_pem))
    git_server.clear_requests()
    with own_service(tmp_path / "svc", windmill, wrong_ca, RETRY_ATTEMPTS="1", **env) as service:
        response = service.post("/sync", target.body())
    assert response.status_code == 500
    assert "TLS certificate could not be verified" in response.json()["message"]
    assert not [r for r in git_server.requests if r.repo == target.repo]
    assert target.log() == []


# -- compare-and-swap ----------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before-the-advertisement", "before-the-pack"])
def test_a_push_racing_another_is_rebuilt_never_forced(
    service: ServiceProcess,
    target: Target,
    git_server: GitHttpServer,
    windmill,
    tmp_path: Path,
    when: str,
) -> None:
    first = service.post("/sync", target.body()).json()["commit"]
    target.workspace.add_script("f/team/racing", language="bash", content="echo r\n")
    raced: list[str] = []

    def race(method: str, path: str, service_name: str | None) -> None:
        # Another pusher lands between the service's fetch and its push.
        step = ("GET" if when == "before-the-advertisement" else "POST", "git-receive-pack")
        if (method, service_name) == step and not raced and f"/{target.repo}.git/" in path:
            raced.append(
                git_server.clone_and_commit(target.repo, {"docs/other.md": b"theirs\n"}, "theirs")
            )

    git_server.before_backend = race
    try:
        response = service.post("/sync", target.body())
    finally:
        git_server.before_backend = None
    assert response.status_code == 200, response.text
    log = target.log()
    assert raced and log[0] == response.json()["commit"]
    # Built on the other commit, which is kept: a fast-forward, never a force.
    assert log[1:3] == [raced[0], first]
    assert git_server.parents(target.repo, log[0]) == [raced[0]]
    tree = target.tree()
    assert tree["docs/other.md"] == b"theirs\n" and "f/team/racing.sh" in tree
    git_server.fsck(target.repo)


def test_two_services_racing_one_branch_keep_both_changes(
    windmill, git_server: GitHttpServer, ca_pem: Path, tmp_path: Path
) -> None:
    # Two workspaces backed up into one repository and branch, by two processes at once.
    a = new_target(windmill, git_server)
    b = new_target(windmill, git_server)
    shared_url = a.remote_url
    replicas = [start_service(tmp_path / f"replica{i}", windmill, ca_pem) for i in (1, 2)]
    try:
        for round_ in range(3):
            for t in (a, b):
                t.workspace.add_script(
                    f"f/team/r{round_}", language="bash", content=f"echo {round_}\n"
                )
            bodies = [
                a.body(git_remote_url=shared_url, path_prefix="ws-a"),
                b.body(git_remote_url=shared_url, path_prefix="ws-b"),
            ]
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                responses = list(
                    pool.map(
                        lambda sb: sb[0].post("/sync", sb[1]), zip(replicas, bodies, strict=True)
                    )
                )
            assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    finally:
        for replica in replicas:
            replica.stop()
    log = git_server.log(a.repo)
    for child, parent in itertools.pairwise(log):
        assert git_server.parents(a.repo, child) == [parent]
    tree = git_server.read_tree(a.repo)
    for prefix, t in (("ws-a", a), ("ws-b", b)):
        expected = tmp_path / f"plain-{prefix}"
        plain_pull(windmill, t.workspace_id, expected, Scope().wmill_yaml())
        ours = {p[len(prefix) + 1 :]: c for p, c in tree.items() if p.startswith(prefix + "/")}
        ours.pop("README.md", None)
        assert ours == files_under(expected), prefix
    git_server.fsck(a.repo)


# -- packs and open files over many syncs ----------------------------------------------------------


def test_packs_and_open_files_stay_bounded_over_many_syncs(
    target: Target, windmill, ca_pem: Path, tmp_path: Path
) -> None:
    settings = Settings.from_mapping(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": str(ca_pem),
        }
    )
    service = SyncService(settings)
    service.prepare_data_dir()

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    packs_seen: list[int] = []
    fds_seen: list[int] = []
    for n in range(2 * MAX_PACKS + 6):
        target.workspace.add_script(f"f/bulk/s{n}", language="bash", content=f"echo {n}\n")
        result = service.sync(parse_sync_request(target.body()).to_job())
        assert result.changed
        pack_dir = next((tmp_path / "data").glob("targets/*/repo.git/objects/pack"))
        packs_seen.append(len(list(pack_dir.glob("*.pack"))))
        fds_seen.append(open_files())
    assert max(packs_seen) <= MAX_PACKS + 1, packs_seen
    assert min(packs_seen[MAX_PACKS + 2 :]) < MAX_PACKS, packs_seen  # a repack happened
    assert fds_seen[-1] <= fds_seen[4] + 5, fds_seen
    assert len(target.log()) >= len(packs_seen)
    target.git_server.fsck(target.repo)
