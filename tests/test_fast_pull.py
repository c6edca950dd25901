"""The fast first pull writes exactly what a plain `wmill sync pull` writes.

A pull into a fresh export directory (a first sync, or one after an interrupted
pull), or into one with a large lock file, runs the pinned CLI with its
wmill-lock.yaml updates batched (see ``fast_pull``). Here that pull, through
the service's own ``WmillCli.pull``, is compared file by file and byte for
byte, wmill-lock.yaml included, with a plain pull of the unmodified CLI, on a
workspace of a few hundred items of every kind; then the pulls that follow,
batched or not, must leave both directories the same. No assertion is about
time.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.secrets import Redactor, Secret
from gitsync.windmill import fast_pull, wmill
from gitsync.windmill.wmill import Scope, WmillCli
from tests.conftest import WINDMILL_TOKEN, bare_cli_pull, files_under
from tests.servers.service_process import WMILL_CLI
from tests.servers.windmill_emulator import WindmillEmulator, Workspace

# Every kind the backup handles, secrets (as ciphertext) included; settings are
# left out because the service scrubs them after the pull (tested elsewhere).
SCOPE = Scope(include_users=True, secrets="encrypted")
N_ITEMS = 300


def plain_cli_pull(
    windmill: WindmillEmulator, workspace_id: str, dest: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The unmodified pinned CLI, run the way a user runs it (no service code involved)."""
    return bare_cli_pull(windmill, workspace_id, dest, SCOPE.wmill_yaml(), *args)


def seed(ws: Workspace) -> None:
    """A few hundred synthetic items plus one of everything else that has a lock entry."""
    ws.seed_synthetic(N_ITEMS, seed=7)
    ws.seed_basic()
    # Workspace dependencies change the lock hash of every python script.
    ws.add_workspace_dependency("python3", "requests==2.32.3\n")
    ws.add_workspace_dependency("bun", '{"dependencies": {"lodash": "4.17.21"}}', name="extra")
    ws.add_script(
        "f/team/with_modules",
        language="python3",
        summary="Script with modules",
        content="from helper import x\n\n\ndef main():\n    return x\n",
        modules={
            "helper.py": {"content": "x = 1\n", "language": "python3", "lock": None},
        },
    )


class Recorder:
    """Wraps process.run in wmill.py to see each CLI command line (never the token)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: Any) -> Any:
        self.argvs.append(list(argv))
        return self.real(argv, **kwargs)

    def batched(self) -> list[bool]:
        return ["--import" in argv for argv in self.argvs]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder(wmill.run)
    monkeypatch.setattr(wmill, "run", rec)
    yield rec


def service_pull(
    windmill: WindmillEmulator, workspace_id: str, export_dir: Path, **kw: Any
) -> None:
    settings = Settings(
        windmill_base_url=windmill.base_url, wmill_cli=WMILL_CLI, data_dir=export_dir.parent, **kw
    )
    token = Secret(WINDMILL_TOKEN)
    WmillCli(settings).pull(
        workspace=workspace_id,
        token=token,
        export_dir=export_dir,
        scope=SCOPE,
        deadline=Deadline(600),
        redactor=Redactor([token], []),
    )


def assert_same_tree(fast: Path, plain: Path) -> None:
    a, b = files_under(fast), files_under(plain)
    assert sorted(a) == sorted(b), (
        f"only in the fast pull: {sorted(a.keys() - b.keys())[:20]}; "
        f"only in the plain pull: {sorted(b.keys() - a.keys())[:20]}"
    )
    differing = [path for path in sorted(a) if a[path] != b[path]]
    assert not differing, f"files that differ: {differing[:20]}"


def test_the_pinned_cli_takes_the_batched_path() -> None:
    # An upgrade of the CLI that moves the anchors would silently bring back
    # the quadratic first pull: this says so instead.
    assert fast_pull.patchable(WMILL_CLI)
    options = fast_pull.node_options(WMILL_CLI)
    assert options[0] == "--import"
    assert options[1].startswith("data:text/javascript,")


def test_another_cli_runs_unmodified(tmp_path: Path) -> None:
    other = tmp_path / "main.js"
    other.write_text("console.log('not the pinned CLI');\n")
    assert not fast_pull.patchable(other)
    assert fast_pull.node_options(other) == []
    assert fast_pull.node_options(tmp_path / "wmill") == []  # a binary wrapper


def test_fast_first_pull_is_byte_identical_to_a_plain_pull(
    windmill: WindmillEmulator, tmp_path: Path, recorder: Recorder
) -> None:
    workspace_id = "fastpull-identical"
    ws = windmill.workspace(workspace_id)
    seed(ws)
    fast, plain = tmp_path / "fast" / "export", tmp_path / "plain"
    plain.mkdir()

    service_pull(windmill, workspace_id, fast)
    plain_cli_pull(windmill, workspace_id, plain)

    assert recorder.batched() == [True], "a fresh export directory takes the batched pull"
    files = files_under(plain)
    lock = files["wmill-lock.yaml"].decode()
    # Large enough to matter: hundreds of lock entries, of scripts, flows, apps, modules.
    assert lock.count("\n  ") > N_ITEMS
    for marker in ("+__flow_hash:", "+__app_hash:", "+__script_hash:", "f/team/hello_py:"):
        assert marker in lock
    assert any(p.startswith("dependencies/") for p in files)
    assert_same_tree(fast, plain)

    # The next ordinary pull finds nothing to do in either directory.
    results = []
    for directory in (fast, plain):
        out = plain_cli_pull(windmill, workspace_id, directory, "--json-output").stdout
        results.append(json.loads(out[out.index("{") :]))
    no_change = {"success": True, "message": "No changes to apply", "total": 0}
    assert results[0] == results[1] == no_change
    assert_same_tree(fast, plain)


def change_items(ws: Workspace, round_: int) -> None:
    """Edits, additions and deletions of items with lock entries, and of a dependency."""
    ws.update("script", "f/team/hello_py", content=f"def main():\n    return {round_}\n")
    ws.update("script", "f/team/with_modules", summary=f"summary {round_}")
    ws.update("flow", "f/team/my_flow", summary=f"flow {round_}")
    ws.update("app", "f/team/my_app", summary=f"app {round_}")
    for i in range(30):
        ws.add_script(
            f"f/team/added_{round_}_{i}", language="bun", content=f"export const x = {i};\n"
        )
    if round_ == 2:
        ws.delete("app", "f/team/my_app")
        ws.delete("flow", "f/team/my_flow")
        ws.delete("script", "f/team/added_1_0")
    ws.add_workspace_dependency("python3", f"requests==2.32.{round_}\n")


def test_pulls_after_the_fast_one_match_plain_pulls(
    windmill: WindmillEmulator, tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace_id = "fastpull-incremental"
    ws = windmill.workspace(workspace_id)
    seed(ws)
    fast, plain = tmp_path / "fast" / "export", tmp_path / "plain"
    plain.mkdir()
    service_pull(windmill, workspace_id, fast)
    plain_cli_pull(windmill, workspace_id, plain)

    # A small lock file: the next pull is the CLI as it is.
    change_items(ws, 1)
    service_pull(windmill, workspace_id, fast)
    plain_cli_pull(windmill, workspace_id, plain)
    assert recorder.batched() == [True, False]
    assert_same_tree(fast, plain)

    # A large one (made so by lowering the bar): batched again, and still the
    # same, deletions included.
    monkeypatch.setattr(fast_pull, "LARGE_LOCK_ENTRIES", 100)
    change_items(ws, 2)
    service_pull(windmill, workspace_id, fast)
    plain_cli_pull(windmill, workspace_id, plain)
    assert recorder.batched() == [True, False, True]
    assert_same_tree(fast, plain)

    # Nothing changed, batched: every script's metadata is the same text on
    # both sides, so the hook skips its parse; the files stay the same.
    before = files_under(fast)
    service_pull(windmill, workspace_id, fast)
    assert recorder.batched() == [True, False, True, True]
    assert files_under(fast) == before

    # An interrupted pull leaves the directory in an unknown state: the next
    # pull starts afresh, batched again, and writes what a plain first pull
    # writes. (Not what the incremental directory holds: the CLI keeps lock
    # entries of deleted items until a directory is pulled afresh.)
    (fast.parent / "export.incomplete").touch()
    (fast / "f" / "team" / "hello_py.py").write_text("half-written")
    service_pull(windmill, workspace_id, fast)
    assert recorder.batched() == [True, False, True, True, True]
    plain_again = tmp_path / "plain-again"
    plain_again.mkdir()
    plain_cli_pull(windmill, workspace_id, plain_again)
    assert_same_tree(fast, plain_again)


def test_a_node_without_import_gets_a_plain_pull(
    windmill: WindmillEmulator, tmp_path: Path, recorder: Recorder
) -> None:
    workspace_id = "fastpull-old-node"
    windmill.workspace(workspace_id).seed_basic()
    fake = tmp_path / "bin" / "old-node"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--import" ]; then echo "$0: bad option: --import" >&2; exit 9; fi\n'
        'exec node "$@"\n'
    )
    fake.chmod(0o755)
    fast, plain = tmp_path / "fast" / "export", tmp_path / "plain"
    plain.mkdir()

    service_pull(windmill, workspace_id, fast, node_bin=str(fake))
    plain_cli_pull(windmill, workspace_id, plain)

    assert recorder.batched() == [True, False]
    assert_same_tree(fast, plain)
