"""Hostile repositories, redirects and confused deputies (security notes T14, T19-T24)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import GitError
from gitsync.git.repo import GitRepo
from gitsync.secrets import Redactor, Secret
from gitsync.windmill.wmill import Scope
from tests.conftest import GIT_TOKEN, Target, files_under, plain_pull
from tests.servers.git_server import GitHttpServer, Symlink
from tests.servers.service_process import ServiceProcess


@pytest.fixture(scope="module")
def other_server(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GitHttpServer]:
    server = GitHttpServer(tmp_path_factory.mktemp("other-git"), token=GIT_TOKEN, ca=ca)
    server.start()
    yield server
    server.stop()


def _git(args: list[str], cwd: Path, home: Path, stdin: bytes | None = None) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "Mallory",
        "GIT_AUTHOR_EMAIL": "m@evil.example",
        "GIT_COMMITTER_NAME": "Mallory",
        "GIT_COMMITTER_EMAIL": "m@evil.example",
    }
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, input=stdin, check=True, capture_output=True, timeout=60
    )
    return result.stdout.decode().strip()


def push_hostile_commit(bare: Path, tmp: Path, outside: Path, marker: Path) -> None:
    """A commit no honest repository holds, written with plumbing into the server's repo."""
    work = tmp / "hostile"
    home = tmp / "hostile-home"
    work.mkdir()
    home.mkdir()
    _git(["init", "--quiet", "-b", "main"], work, home)

    def blob(data: bytes) -> str:
        return _git(["hash-object", "-w", "--stdin"], work, home, stdin=data)

    entries = {
        # A link where the export writes a directory, and one beside it.
        "f/team": ("120000", blob(str(outside).encode())),
        "f/evil": ("120000", blob(str(outside / "passwd").encode())),
        ".gitattributes": ("100644", blob(b"* filter=evil ident\n*.py text eol=crlf\n")),
        ".gitignore": ("100644", blob(b"*\n")),
        ".gitmodules": (
            "100644",
            blob(f'[submodule "sub"]\n\tpath = sub\n\turl = ext::sh -c touch% {marker}\n'.encode()),
        ),
        # The CLI must never read this: it would widen the scope to secrets.
        "wmill.yaml": (
            "100644",
            blob(b"skipSecrets: false\nplainSecrets: true\nincludes:\n  - '**'\n"),
        ),
    }
    for path, (mode, sha) in entries.items():
        _git(["update-index", "--add", "--cacheinfo", f"{mode},{sha},{path}"], work, home)
    gitlink = "1234567890123456789012345678901234567890"
    _git(["update-index", "--add", "--cacheinfo", f"160000,{gitlink},sub"], work, home)
    tree = _git(["write-tree"], work, home)
    commit = _git(["commit-tree", tree, "-m", "hostile"], work, home)
    _git(["push", "--quiet", str(bare), f"{commit}:refs/heads/main"], work, home)


def test_hostile_repository_content_changes_nothing_and_runs_nothing(
    service: ServiceProcess, target: Target, windmill, git_server: GitHttpServer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "submodule-ran"
    push_hostile_commit(git_server.repo_path(target.repo), tmp_path, outside, marker)
    target.workspace.add_script(
        "f/team/ident_bait", language="python3", content="# $Id$\ndef main():\n    return 1\n"
    )
    target.workspace.add_variable("f/team/db_password", value="s3cr3t-value", is_secret=True)
    git_server.clear_requests()

    # The hostile commit's only "Windmill files" are the two links, which the
    # sync replaces: deliberately past the mass-deletion brake.
    response = service.post("/sync", target.body(allow_mass_deletion=True))

    assert response.status_code == 200, response.text
    assert list(outside.iterdir()) == []
    assert not marker.exists()
    # Only this repository was contacted: no submodule fetch.
    assert {r.repo for r in git_server.requests} == {target.repo}
    expected_dir = tmp_path / "plain"
    plain_pull(windmill, target.workspace_id, expected_dir, Scope().wmill_yaml())
    expected = files_under(expected_dir)
    tree = target.tree()
    for path, content in expected.items():
        assert tree[path] == content, path  # byte-identical: no filter, ident or eol
    assert tree["wmill.yaml"] == Scope().wmill_yaml().encode()
    assert "f/evil" not in tree
    assert not isinstance(tree.get("f/team/ident_bait.py"), Symlink)
    assert not any(b"s3cr3t-value" in content for content in tree.values())
    assert not any("db_password" in path for path in tree)


def test_no_confused_deputy(
    service: ServiceProcess, target: Target, other_server: GitHttpServer
) -> None:
    assert service.post("/sync", target.body()).status_code == 200
    other_server.create_repo("stolen")
    other_server.clear_requests()

    response = service.post(
        "/sync",
        target.body(
            windmill_token="wm_not_a_valid_token_000", git_remote_url=other_server.url("stolen")
        ),
    )

    assert response.status_code == 500
    assert "Windmill rejected the token" in response.json()["message"]
    assert other_server.receive_pack_posts() == []
    assert other_server.requests == []
    assert other_server.log("stolen") == []


def test_redirects_are_not_followed_and_send_no_credentials(
    service: ServiceProcess,
    target: Target,
    git_server: GitHttpServer,
    other_server: GitHttpServer,
    ca: trustme.CA,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    redirecting = GitHttpServer(tmp_path_factory.mktemp("redirecting"), token=GIT_TOKEN, ca=ca)
    redirecting.start()
    try:
        redirecting.create_repo(target.repo)
        redirecting.redirect_to = other_server.base_url
        other_server.create_repo(target.repo)
        other_server.clear_requests()

        response = service.post("/sync", target.body(git_remote_url=redirecting.url(target.repo)))
    finally:
        redirecting.stop()

    assert response.status_code == 500
    assert "redirect" in response.json()["message"]
    assert other_server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% {marker}",
        "fd::0",
        "file://{repo}",
        "{repo}",
        "--upload-pack=touch {marker};:",
        "http://127.0.0.1:9/{repo}",
        f"https://x:{GIT_TOKEN}@127.0.0.1:9/r.git",
    ],
)
def test_every_transport_but_https_is_refused_even_without_validation(
    url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    repo = tmp_path / "local.git"
    subprocess.run(
        ["git", "init", "--quiet", "--bare", str(repo)],
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    remote = url.format(marker=marker, repo=repo)
    settings = Settings.from_mapping({"DATA_DIR": str(tmp_path / "data")})
    git = GitRepo(
        settings=settings,
        git_dir=tmp_path / "g.git",
        remote_url=remote,
        branch="main",
        token=Secret(GIT_TOKEN),
        username="git",
        redactor=Redactor([Secret(GIT_TOKEN)]),
        deadline=Deadline(60),
    )
    git.ensure_initialized()
    with git, pytest.raises(GitError) as info:
        git.fetch_tip()
    assert not marker.exists()
    assert GIT_TOKEN not in str(info.value) + (info.value.detail or "")
    # Refused before any connection: only https, and never with credentials in the URL.
    assert "https URL without credentials" in str(info.value)
