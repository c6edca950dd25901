"""One version, setup.cfg's: what `--version`, /metrics and the image labels say.

The image itself is built and inspected in tests/test_container.py; here the
Dockerfile's label defaults are read as a plain `docker build` resolves them.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess

from gitsync.version import CLI_VERSION
from tests.conftest import CLI
from tests.project import dockerfile_labels, final_stage_args, metadata, pinned_cli_version
from tests.servers.service_process import ServiceProcess


def test_version_command_prints_setup_cfg_version() -> None:
    done = subprocess.run(
        [str(CLI), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"windmill-git-sync {metadata()['version']} (windmill-cli {pinned_cli_version()})"
    )
    # The installed metadata is setup.cfg's (a stale editable install would differ).
    assert importlib.metadata.version("windmill-git-sync") == metadata()["version"]


def test_dockerfile_labels_default_to_setup_cfg() -> None:
    meta = metadata()
    assert final_stage_args()["VERSION"] == meta["version"]
    labels = dockerfile_labels()
    assert labels["org.opencontainers.image.version"] == meta["version"]
    assert labels["org.opencontainers.image.title"] == meta["name"]
    assert labels["org.opencontainers.image.description"] == meta["description"]
    assert labels["org.opencontainers.image.licenses"] == meta["license"]
    assert "org.opencontainers.image.source" in labels
    # CI's build arguments land in the labels.
    built = dockerfile_labels(VERSION="9.9.9", SOURCE_URL="https://github.com/o/r")
    assert built["org.opencontainers.image.version"] == "9.9.9"
    assert built["org.opencontainers.image.source"] == "https://github.com/o/r"


def test_cli_version_is_the_pinned_cli() -> None:
    assert CLI_VERSION == pinned_cli_version()


def test_metrics_say_which_version_runs_and_the_server_header_does_not(
    service: ServiceProcess,
) -> None:
    response = service.get("/metrics")
    assert response.status_code == 200
    found = re.findall(r"^windmill_git_sync_build_info\{(.*)\} (\S+)$", response.text, re.M)
    assert len(found) == 1, response.text
    labels, value = found[0]
    assert dict(re.findall(r'(\w+)="([^"]*)"', labels)) == {
        "version": metadata()["version"],
        "cli_version": pinned_cli_version(),
    }
    assert float(value) == 1.0
    assert response.headers["Server"] == "windmill-git-sync"
    assert not re.search(r"\d+\.\d+", response.headers["Server"])
