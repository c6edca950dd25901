"""Building the image from the repository, the way a user's ``docker build`` does.

The build gets, besides the base image, only what a user might give it too:

- an extra CA bundle as the BuildKit secret ``extra_ca`` when this machine
  trusts CAs of its own (``/usr/local/share/ca-certificates``: a TLS-
  intercepting proxy's), or the file named by ``WGS_BUILD_EXTRA_CA``;
- ``PIP_INDEX_URL`` / ``NPM_REGISTRY`` build arguments from
  ``WGS_BUILD_PIP_INDEX_URL`` / ``WGS_BUILD_NPM_REGISTRY`` when set;
- the proxy variables of this environment, as Docker's predefined build
  arguments (never stored in the image).

Without any of them the Dockerfile builds unchanged.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.container.engine import LABEL, Docker, _tail

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_TAG = "wgs-test/windmill-git-sync:test"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


def extra_ca_bundle(dest: Path) -> Path | None:
    """The CAs this machine adds to the public ones, as one PEM file, or None."""
    named = os.environ.get("WGS_BUILD_EXTRA_CA")
    if named is not None:
        return Path(named) if named else None
    pems = (
        sorted(p for p in LOCAL_CA_DIR.rglob("*.crt") if p.is_file())
        if LOCAL_CA_DIR.is_dir()
        else []
    )
    if not pems:
        return None
    dest.write_bytes(b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in pems))
    dest.chmod(0o600)
    return dest


def build(docker: Docker, base_image: str, *, timeout: float = 1500) -> str:
    """Build the repository's Dockerfile; returns the image id."""
    log = docker.log_dir / "build.log"
    args = [
        "build",
        "--progress", "plain",
        "--network", "host",  # our dockerd has no bridge; the build's RUNs use the host's
        "--build-arg", f"BASE_IMAGE={base_image}",
        "--label", f"{LABEL}=1",
        "--tag", IMAGE_TAG,
    ]  # fmt: skip
    ca = extra_ca_bundle(docker.log_dir / "extra-ca.pem")
    if ca is not None:
        args += ["--secret", f"id=extra_ca,src={ca}"]
    for env_key, arg in (
        ("WGS_BUILD_PIP_INDEX_URL", "PIP_INDEX_URL"),
        ("WGS_BUILD_NPM_REGISTRY", "NPM_REGISTRY"),
    ):
        if os.environ.get(env_key):
            args += ["--build-arg", f"{arg}={os.environ[env_key]}"]
    for key in _PROXY_VARS:
        if os.environ.get(key):
            args += ["--build-arg", f"{key}={os.environ[key]}"]
    args.append(str(REPO_ROOT))
    started = time.monotonic()
    with open(log, "wb") as out:
        result = subprocess.run(
            [docker.cli, *args],
            env=docker.env(DOCKER_BUILDKIT="1"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"docker build failed ({result.returncode}); {log}:\n{_tail(log, 60)}")
    docker.note(
        f"built {IMAGE_TAG} in {time.monotonic() - started:.0f}s"
        + (f" (extra CA from {LOCAL_CA_DIR})" if ca is not None else "")
    )
    # Earlier builds of the image and stale build cache would pile up in a cached data root.
    docker.run("image", "prune", "-f", "--filter", f"label={LABEL}", timeout=300, check=False)
    docker.run("builder", "prune", "-f", "--keep-storage", "4GB", timeout=300, check=False)
    return docker.text("image", "inspect", "--format", "{{.Id}}", IMAGE_TAG)
