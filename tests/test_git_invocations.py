"""How git is invoked, recorded by a wrapper that forwards to the real git.

The wrapper (placed as GIT_BIN, the way git-sync's own tests inject faults)
logs each argv and the names of the environment variables it got, then execs
git. Assertions are on what git was asked to do, with real git doing it.
"""

from __future__ import annotations

import json
from pathlib import Path

from gitsync.config import Settings
from gitsync.sync.service import SyncService
from gitsync.web.requests import parse_sync_request
from tests.conftest import GIT_TOKEN, WINDMILL_TOKEN, Target

WRAPPER = """#!/usr/bin/env python3
import json, os, sys
with open({log!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "env": sorted(os.environ)}}) + "\\n")
os.execv("/usr/bin/git", ["git", *sys.argv[1:]])
"""


def test_every_remote_argument_follows_end_of_options(
    target: Target, windmill, ca_pem: Path, tmp_path: Path
) -> None:
    log = tmp_path / "git-calls.jsonl"
    wrapper = tmp_path / "git-wrapper"
    wrapper.write_text(WRAPPER.format(log=str(log)))
    wrapper.chmod(0o755)
    settings = Settings.from_mapping(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "WINDMILL_BASE_URL": windmill.base_url,
            "GIT_SSL_CAINFO": str(ca_pem),
            "GIT_BIN": str(wrapper),
        }
    )
    service = SyncService(settings)
    service.prepare_data_dir()
    service.sync(parse_sync_request(target.body()).to_job())
    # A commit made elsewhere makes the next sync fetch.
    target.git_server.clone_and_commit(target.repo, {"README.md": b"hi\n"}, "human")
    target.workspace.add_script("f/team/second", language="bash", content="echo 2\n")
    result = service.sync(parse_sync_request(target.body()).to_job())
    assert result.changed and target.log()[0] == result.commit

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    remote_calls = [c for c in calls if c["argv"][0] in ("ls-remote", "fetch", "push")]
    assert {c["argv"][0] for c in remote_calls} == {"ls-remote", "fetch", "push"}
    for call in remote_calls:
        argv = call["argv"]
        assert argv[argv.index(target.remote_url) - 1] == "--end-of-options", argv
        if argv[0] == "push":
            assert "--force" not in argv and "-f" not in argv
            refspec = argv[-1]
            assert refspec.endswith(":refs/heads/main") and not refspec.startswith("+")
    for call in calls:
        assert not any(GIT_TOKEN in a or WINDMILL_TOKEN in a for a in call["argv"])
        # The environment is the service's allow-list, not the test runner's.
        assert "PYTEST_CURRENT_TEST" not in call["env"]
        assert "WM_TOKEN" not in call["env"]
    # Git's own config never receives the credential or the remote.
    for config in (tmp_path / "data").rglob("repo.git/config"):
        text = config.read_text()
        assert "credential" not in text and "url" not in text
