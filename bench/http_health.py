"""``GET /health`` throughput and the server's resident memory, idle and under load.

    python -m bench.http_health                      # the installed `windmill-git-sync serve`
    python -m bench.http_health --exe OTHER/bin/windmill-git-sync   # e.g. an older build

Starts the service on loopback (PORT=0), then, for each mode, sends
``--requests`` requests from ``--concurrency`` clients: over kept-alive
connections, and over a new connection per request. Prints requests per
second and the median latency (median of ``--rounds`` rounds), and the RSS of
the service's own processes (same executable: one for waitress, master and
worker for gunicorn) idle and at its highest under load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_PORT = re.compile(r"(?:listening on|Listening at:) http://[0-9.]+:(\d+)")
_REQUEST = b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
_CLOSE = b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def _rss_kb(root: int) -> int:
    exe = os.readlink(f"/proc/{root}/exe")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/exe") != exe:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if int(entry) != root and ppid != root:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


async def _read_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)


async def _client(port: int, count: int, keep_alive: bool, latencies: list[float]) -> None:
    conn = await asyncio.open_connection("127.0.0.1", port) if keep_alive else None
    for _ in range(count):
        start = time.perf_counter()
        if conn is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_CLOSE)
            await _read_response(reader)
            writer.close()
            await writer.wait_closed()
        else:
            conn[1].write(_REQUEST)
            await _read_response(conn[0])
        latencies.append(time.perf_counter() - start)
    if conn is not None:
        conn[1].close()


async def _round(
    port: int, requests: int, concurrency: int, keep_alive: bool
) -> tuple[float, float]:
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.wait_for(
        asyncio.gather(
            *(
                _client(port, requests // concurrency, keep_alive, latencies)
                for _ in range(concurrency)
            )
        ),
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exe", default=str(Path(sys.executable).parent / "windmill-git-sync"))
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        log = Path(tmp) / "service.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tmp,
            "HOST": "127.0.0.1",
            "PORT": "0",
            "DATA_DIR": str(Path(tmp) / "data"),
            "LOG_LEVEL": "INFO",  # as deployed: both servers write an access line per request
            "LOG_FORMAT": "json",
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [args.exe, "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            port = 0
            for _ in range(300):
                match = _PORT.search(log.read_text(errors="replace"))
                if match:
                    port = int(match.group(1))
                    break
                time.sleep(0.05)
            if not port:
                print(log.read_text(), file=sys.stderr)
                return 1
            time.sleep(2)
            idle = _rss_kb(proc.pid)
            peak = [idle]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], _rss_kb(proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            for keep_alive in (True, False):
                rounds = [
                    asyncio.run(_round(port, args.requests, args.concurrency, keep_alive))
                    for _ in range(args.rounds)
                ]
                rates = sorted(r[0] for r in rounds)
                mid = rounds[[r[0] for r in rounds].index(rates[len(rates) // 2])]
                mode = "keep-alive" if keep_alive else "new connection per request"
                print(
                    f"{mode}: {mid[0]:,.0f} req/s (p50 {mid[1]:.1f} ms); "
                    f"all rounds: {', '.join(f'{r:,.0f}' for r in rates)}"
                )
            stop.set()
            sampler.join()
            print(
                f"RSS idle: {idle / 1024:.1f} MiB; under load (highest): {peak[0] / 1024:.1f} MiB"
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
