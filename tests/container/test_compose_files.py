"""The compose block and .env.example are what the README tells users to paste.

No Docker needed: these run everywhere. ``tests/test_container.py`` then runs
the image with this very block's settings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from gitsync.config import Settings
from tests.container.service import REPO_ROOT, SERVICE, compose_run_flags, compose_service


def readme_compose_block() -> dict[str, Any]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Docker deployment", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "no yaml block in the README's Docker deployment section"
    data = yaml.safe_load(block.group(1))
    service = data["services"][SERVICE]
    assert isinstance(service, dict)
    return service


def test_compose_block_is_the_readme_block() -> None:
    pasted = readme_compose_block()
    ours = compose_service()
    # Only the build context differs: the README's is the clone next to the user's compose file.
    assert pasted.pop("build") == "./windmill-git-sync"
    assert ours.pop("build") == "."
    assert pasted == ours


def test_compose_block_runs_the_service_safely() -> None:
    service = compose_service()
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
    assert [v for v in service["volumes"] if v.split("#")[0].strip().endswith(":/data")]
    assert not service.get("ports"), "the service must not be published on the host"
    grace = re.fullmatch(r"(\d+)m", service["stop_grace_period"])
    assert grace and int(grace.group(1)) * 60 >= 900 + 30, "shorter than SYNC_TIMEOUT + margin"
    # The drain must end (and record what it cut off) before Docker's SIGKILL.
    defaults = Settings()
    assert defaults.sync_timeout < defaults.shutdown_grace <= int(grace.group(1)) * 60 - 20
    assert "init" not in service, "the image's entrypoint is tini already"
    compose_run_flags(service)  # every key has a `docker run` equivalent the container test uses


def test_env_example_sets_what_the_block_reads_and_no_secret() -> None:
    env_example = (REPO_ROOT / ".env.example").read_text()
    settings = dict(
        line.split("=", 1) for line in env_example.splitlines() if line and not line.startswith("#")
    )
    used = set(re.findall(r"\$\{(\w+)", yaml.safe_dump(compose_service())))
    assert set(settings) == used
    assert not [k for k in settings if re.search("TOKEN|SECRET|PASSWORD|KEY", k)]
    readme = (REPO_ROOT / "README.md").read_text()
    assert all(key in readme for key in settings)
