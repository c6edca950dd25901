"""The leak scan, run inside the container with ``docker exec``.

The scanner of ``tests/servers/proc_scan.py`` is sent as the program text of
``python3 -c`` (the image has no tests in it); the needles never are: they
come on standard input, so the probe's own command line holds no secret.
While it runs it samples every process's ``/proc/<pid>/cmdline`` in the
container and, every half second, the files under ``/tmp`` (the tmpfs where
the CLI's throwaway home lives); when told to stop it scans ``/data`` too and
prints one JSON report.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from tests.container.service import ContainerService

_SCANNER = (Path(__file__).resolve().parents[1] / "servers" / "proc_scan.py").read_text()

_DRIVER = r"""

def _probe_main():
    import json, sys, threading, base64
    config = json.loads(sys.stdin.readline())
    needles = [base64.b64decode(n) for n in config["needles"]]
    scanner = ProcScanner(needles, interval=0.005, environ=False)
    files = set()
    stop = threading.Event()

    def watch_tmp():
        while not stop.wait(0.5):
            files.update(str(p) for p in scan_tree("/tmp", needles))

    watcher = threading.Thread(target=watch_tmp, daemon=True)
    scanner.start()
    watcher.start()
    print("STARTED", flush=True)
    sys.stdin.readline()  # "stop", or EOF
    stop.set()
    watcher.join(10)
    hits = scanner.stop()
    for root in config["roots"]:
        files.update(str(p) for p in scan_tree(root, needles))
    print(json.dumps({
        "sweeps": scanner.sweeps,
        "hits": [{"pid": h.pid, "exe": h.exe, "where": h.where, "needle": h.needle} for h in hits],
        "files": sorted(files),
    }), flush=True)

_probe_main()
"""


class LeakProbe:
    def __init__(self, container: ContainerService, needles: list[bytes]) -> None:
        self.container = container
        self.needles = needles
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LeakProbe:
        docker = self.container.docker
        self.proc = subprocess.Popen(
            [
                docker.cli,
                "exec",
                "--interactive",
                self.container.name,
                "python3",
                "-c",
                _SCANNER + _DRIVER,
            ],
            env=docker.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        config = {
            "needles": [base64.b64encode(n).decode() for n in self.needles],
            "roots": ["/data", "/tmp"],
        }
        self.proc.stdin.write(json.dumps(config).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line.strip() != b"STARTED":
            raise RuntimeError(f"leak probe did not start: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        return self

    def stop(self, timeout: float = 120) -> dict[str, Any]:
        assert self.proc is not None
        out, err = self.proc.communicate(b"stop\n", timeout=timeout)
        self.proc = None
        lines = out.decode().strip().splitlines()
        if not lines:
            raise RuntimeError(
                f"leak probe printed nothing; stderr: {err.decode(errors='replace')[-2000:]}"
            )
        report = json.loads(lines[-1])
        assert isinstance(report, dict)
        return report

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate(timeout=30)
            self.proc = None
