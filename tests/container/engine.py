"""A Docker engine for the container test, and the Debian base image it builds on.

Where the engine comes from, in order:

1. ``WGS_DOCKER_HOST`` names one (``unix:///...``, ``tcp://...``): it is used as is.
2. Running as root on Linux: a private ``dockerd`` of our own, installed with
   apt-get (``docker.io``) when missing, listening on a socket under the cache
   directory, with its own data root (kept between runs, so the base image and
   the build cache survive) and no iptables or bridge: containers use
   ``--network host``. It is stopped (that process only) when the test ends.
   A system dockerd is never touched.
3. Otherwise an engine that already answers (``DOCKER_HOST`` or the default
   socket).

None of them: ``Unavailable`` with the reason, and the test is skipped.

The base image is a faithful ``debian:bookworm-slim`` made locally with
``debootstrap`` (no registry is needed), from the Debian mirror the machine's
apt uses, and cached as a tarball.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CACHE_DIR = Path(os.environ.get("WGS_CONTAINER_CACHE") or "/var/cache/wgs-container-test")
BASE_TAG = "wgs-test/debian:bookworm-slim"
OFFICIAL_BASE = "debian:bookworm-slim"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
BASE_MAX_AGE = datetime.timedelta(days=14)  # then the base is made again, with fresh packages
LABEL = "wgs-container-test"  # on everything the test creates in an engine

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """No Docker engine can run here; the message says why."""


REASON = pytest.StashKey[str | None]()  # why the container test cannot run, once known


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def cannot_run(config: pytest.Config, reason: str) -> None:
    """Record why (tests/container/skip_report.py prints it), then skip; under CI, fail."""
    config.stash[REASON] = reason
    if under_ci():
        pytest.fail(f"container test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"container test: {reason}")


@dataclass
class Docker:
    """A docker CLI bound to one engine."""

    cli: str
    host: str | None  # DOCKER_HOST, None for the CLI's default
    private: bool  # our own dockerd (we may install packages and make the base image)
    log_dir: Path
    notes: list[str] = field(default_factory=list)  # what setup did, with timings

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", _SYSTEM_PATH),
            "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_CONFIG": str(self.log_dir / "docker-config"),  # no stored credentials
        }
        if self.host:
            env["DOCKER_HOST"] = self.host
        env.update(extra)
        return env

    def run(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = True,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [self.cli, *args],
            env=env or self.env(),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args[:3])} ... failed ({result.returncode}):\n"
                f"{result.stderr.decode(errors='replace')[-4000:]}"
            )
        return result

    def text(self, *args: str, timeout: float = 120) -> str:
        return self.run(*args, timeout=timeout).stdout.decode().strip()

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def note(self, message: str) -> None:
        self.notes.append(message)
        print(f"[container test] {message}", file=sys.stderr, flush=True)


# -- choosing and starting an engine -------------------------------------------------------


def preflight() -> str | None:
    """Why the container test cannot run here at all, or None. Cheap: starts nothing."""
    if not sys.platform.startswith("linux"):
        return f"Docker engines are started only on Linux, this is {sys.platform}"
    if os.environ.get("WGS_DOCKER_HOST"):
        return None
    if os.geteuid() == 0:
        if shutil.which("dockerd", path=_SYSTEM_PATH) or shutil.which("apt-get", path=_SYSTEM_PATH):
            return None
        return "no dockerd, and no apt-get to install docker.io"
    if _reachable_engine() is None:
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return f"not root (cannot start a Docker engine) and no engine answers at {host}"
    return None


def _reachable_engine() -> Docker | None:
    cli = shutil.which("docker")
    if cli is None:
        return None
    docker = Docker(cli, os.environ.get("DOCKER_HOST"), private=False, log_dir=Path("/tmp"))
    try:
        ok = docker.run("version", "--format", "{{.Server.Version}}", timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if ok.returncode == 0 else None


@contextlib.contextmanager
def engine(log_dir: Path) -> Iterator[Docker]:
    """A Docker engine for the duration of the block; see the module docstring."""
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "docker-config").mkdir(exist_ok=True)
    if os.environ.get("WGS_DOCKER_HOST"):
        cli = shutil.which("docker")
        if cli is None:
            raise Unavailable("WGS_DOCKER_HOST is set but there is no docker CLI")
        docker = Docker(cli, os.environ["WGS_DOCKER_HOST"], private=False, log_dir=log_dir)
        docker.run("version", timeout=30)
        yield docker
        return
    if os.geteuid() == 0 and sys.platform.startswith("linux"):
        with _locked(CACHE_DIR / "lock"), _private_dockerd(log_dir) as docker:
            yield docker
        return
    found = _reachable_engine()
    if found is None:
        raise Unavailable(preflight() or "no Docker engine")
    found.log_dir = log_dir
    yield found


@contextlib.contextmanager
def _locked(path: Path, timeout: float = 3600) -> Iterator[None]:
    """One container test per machine at a time: they share the engine's data root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > end:
                    raise
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def apt_install(packages: Sequence[str], log: Path) -> None:
    env = {"PATH": _SYSTEM_PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C"}
    with open(log, "ab") as out:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        ):
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            rc = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
            if rc.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} failed ({rc.returncode}); see {log}:\n{_tail(log)}"
                )


def _missing_packages() -> list[str]:
    missing = []
    if not shutil.which("dockerd", path=_SYSTEM_PATH):
        missing.append("docker.io")
    if not shutil.which("debootstrap", path=_SYSTEM_PATH):
        missing.append("debootstrap")
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").is_file():
        missing.append("debian-archive-keyring")
    return missing


def _major(dockerd: str) -> int:
    out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else 0


def _cli_for(dockerd: str) -> str:
    # The CLI shipped with the daemon (docker.io's /usr/bin/docker) drives BuildKit
    # by itself; a newer CLI elsewhere on PATH may need a buildx plugin it lacks.
    sibling = Path(dockerd).resolve().parent.parent / "bin" / "docker"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    cli = shutil.which("docker", path=_SYSTEM_PATH)
    if cli is None:
        raise RuntimeError("dockerd is installed but no docker CLI was found")
    return cli


@contextlib.contextmanager
def _private_dockerd(log_dir: Path) -> Iterator[Docker]:
    started = time.monotonic()
    missing = _missing_packages()
    if missing:
        if not shutil.which("apt-get", path=_SYSTEM_PATH):
            raise Unavailable(f"{', '.join(missing)} missing and no apt-get to install them")
        apt_install(missing, log_dir / "apt.log")
    dockerd = shutil.which("dockerd", path=_SYSTEM_PATH)
    assert dockerd is not None
    cli = _cli_for(dockerd)

    run_dir = CACHE_DIR / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    data_root = CACHE_DIR / "docker"
    pidfile = run_dir / "dockerd.pid"
    socket_path = run_dir / "docker.sock"
    _stop_stale_dockerd(pidfile, data_root)
    config = run_dir / "daemon.json"
    # Never the system's /etc/docker/daemon.json. Engines before 23 write an
    # identity key to /etc/docker unless told otherwise: keep it ours.
    settings = {"deprecated-key-path": str(run_dir / "key.json")} if _major(dockerd) < 23 else {}
    config.write_text(json.dumps(settings) + "\n")
    log_path = log_dir / "dockerd.log"
    cmd = [
        dockerd,
        "--config-file", str(config),
        "--storage-driver", os.environ.get("WGS_DOCKER_STORAGE_DRIVER", "vfs"),
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        "--data-root", str(data_root),
        "--exec-root", str(run_dir / "exec"),
        "--pidfile", str(pidfile),
        "-H", f"unix://{socket_path}",
    ]  # fmt: skip
    env = {"PATH": _SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root")}
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if key in os.environ:
            env[key] = os.environ[key]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    docker = Docker(cli, f"unix://{socket_path}", private=True, log_dir=log_dir)
    try:
        end = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({proc.returncode}):\n{_tail(log_path)}")
            if socket_path.exists():
                ok = docker.run("version", timeout=20, check=False)
                if ok.returncode == 0:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"dockerd did not answer in 90 s:\n{_tail(log_path)}")
            time.sleep(0.3)
        docker.note(f"private dockerd up in {time.monotonic() - started:.0f}s ({socket_path})")
        _remove_leftovers(docker)
        yield docker
    finally:
        _stop(proc)
        _unmount_under(run_dir / "exec")


def _unmount_under(root: Path) -> None:
    """Mounts dockerd leaves behind in its exec root (the host's netns handle)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    prefix = str(root) + "/"
    points = [line.split()[4] for line in lines if len(line.split()) > 4]
    for point in sorted({p for p in points if p.startswith(prefix)}, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def _stop_stale_dockerd(pidfile: Path, data_root: Path) -> None:
    """A dockerd a crashed earlier run of this test left behind (ours: same data root)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return
    if not cmdline or not cmdline[0].endswith(b"dockerd") or str(data_root).encode() not in cmdline:
        return
    os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < end:
        time.sleep(0.2)


def _remove_leftovers(docker: Docker) -> None:
    ids = docker.text("ps", "-aq", "--filter", f"label={LABEL}").split()
    if ids:
        docker.run("rm", "-f", *ids, timeout=120)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the base image ------------------------------------------------------------------------


def base_image(docker: Docker) -> str:
    """The image to build FROM: a local debian:bookworm-slim, made here when possible."""
    if os.environ.get("WGS_BASE_IMAGE"):
        return os.environ["WGS_BASE_IMAGE"]
    if not docker.private and os.geteuid() != 0:
        # Not root: no debootstrap. Use the official image, pulled if need be.
        if not docker.image_exists(OFFICIAL_BASE):
            pulled = docker.run("pull", OFFICIAL_BASE, timeout=600, check=False)
            if pulled.returncode != 0:
                raise Unavailable(
                    f"cannot pull {OFFICIAL_BASE} and cannot make it (not root): "
                    f"{pulled.stderr.decode(errors='replace').strip()[-300:]}"
                )
        return OFFICIAL_BASE
    tarball = CACHE_DIR / "base" / f"debian-{SUITE}-slim.tar"
    fresh = tarball.is_file() and (
        datetime.datetime.now() - datetime.datetime.fromtimestamp(tarball.stat().st_mtime)
        < BASE_MAX_AGE
    )
    if fresh and docker.image_exists(BASE_TAG):
        created = docker.text(
            "image", "inspect", "--format", '{{index .Config.Labels "wgs.base.tarball"}}', BASE_TAG
        )
        if created == str(int(tarball.stat().st_mtime)):
            return BASE_TAG
    if not fresh:
        started = time.monotonic()
        missing = _missing_packages()
        if "debootstrap" in missing or "debian-archive-keyring" in missing:
            apt_install(["debootstrap", "debian-archive-keyring"], docker.log_dir / "apt.log")
        make_base_tarball(tarball, docker.log_dir / "debootstrap.log")
        docker.note(f"made the {SUITE} base with debootstrap in {time.monotonic() - started:.0f}s")
    with open(tarball, "rb") as data:
        subprocess.run(
            [
                docker.cli, "import",
                "--change", 'CMD ["bash"]',
                "--change", f"LABEL wgs.base.tarball={int(tarball.stat().st_mtime)}",
                "--change", f"LABEL {LABEL}=1",
                "-", BASE_TAG,
            ],
            env=docker.env(),
            stdin=data,
            capture_output=True,
            check=True,
            timeout=600,
        )  # fmt: skip
    docker.run("image", "prune", "-f", "--filter", f"label={LABEL}", timeout=300, check=False)
    return BASE_TAG


def apt_mirrors() -> tuple[str, str]:
    """The Debian mirror (and security mirror) this machine's apt uses, or deb.debian.org."""
    mirror = security = None
    for uri, suites in _apt_sources():
        if mirror is None and SUITE in suites:
            mirror = uri
        if security is None and f"{SUITE}-security" in suites:
            security = uri
    return mirror or DEFAULT_MIRROR, security or DEFAULT_SECURITY_MIRROR


def _apt_sources() -> Iterator[tuple[str, list[str]]]:
    etc = Path("/etc/apt")
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1].rstrip("/"), [words[2]]
        elif path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    yield uri.rstrip("/"), fields.get("suites", "").split()


# What the official slim image carries (debuerreotype's slimify and docker-* apt settings).
_DPKG_SLIM = """\
# This is the "slim" variant of the Debian base image.
# Many files which are normally unnecessary in containers are excluded,
# and this configuration file keeps them that way.
path-exclude /usr/share/doc/*
# we need to keep copyright files for legal reasons
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""
_APT_CONF = {
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
}


def make_base_tarball(out: Path, log: Path) -> None:
    """debootstrap a minbase bookworm and make it look like debian:bookworm-slim."""
    mirror, security = apt_mirrors()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=out.parent) as tmp:
        root = Path(tmp) / "rootfs"
        with open(log, "ab") as out_log:
            cmd = ["debootstrap", "--variant=minbase", SUITE, str(root), mirror]
            out_log.write(f"$ {' '.join(cmd)}\n".encode())
            out_log.flush()
            result = subprocess.run(
                cmd,
                env={"PATH": _SYSTEM_PATH, "LANG": "C"},
                stdout=out_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=1200,
            )
        if result.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({result.returncode}):\n{_tail(log)}")
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (root / "etc/apt/sources.list.d/debian.sources").write_text(
            f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\n"
            f"Components: main\nSigned-By: {keyring}\n\n"
            f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\n"
            f"Components: main\nSigned-By: {keyring}\n"
        )
        for name, text in _APT_CONF.items():
            (root / "etc/apt/apt.conf.d" / name).write_text(text)
        (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/dpkg/dpkg.cfg.d/docker").write_text(_DPKG_SLIM)
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        _slimify(root)
        partial = out.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
            check=True,
            capture_output=True,
            timeout=600,
        )
        partial.replace(out)


def _slimify(root: Path) -> None:
    share = root / "usr/share"
    for sub in ("groff", "info", "linda", "lintian/overrides", "locale", "man"):
        target = share / sub
        if target.is_dir():
            for child in target.iterdir():
                _remove(child)
    doc = share / "doc"
    if doc.is_dir():
        for package in doc.iterdir():
            if package.is_dir() and not package.is_symlink():
                for child in package.iterdir():
                    if child.name != "copyright":
                        _remove(child)
            else:
                _remove(package)
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "var/log/*.log",
        "var/log/apt/*",
        "var/cache/debconf/*-old",
    ):
        for path in root.glob(pattern):
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def inspect(docker: Docker, ref: str) -> dict[str, object]:
    data = json.loads(docker.text("inspect", ref))
    assert isinstance(data, list) and data
    item = data[0]
    assert isinstance(item, dict)
    return item
