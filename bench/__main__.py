"""`make bench`: the service against the bare CLI and the naive script, on loopback.

    python -m bench [--sizes 10,100,1000,5000] [--rounds 3] [--update-docs]

Starts the Windmill emulator, the HTTPS Git server and the real service, runs
every scenario for every size (see bench/scenarios.py), and prints a Markdown
report; ``--update-docs`` also writes it into docs/performance.md. Nothing
leaves the machine. The default run takes about 35 minutes on 2 CPUs, most
of it the bare CLI's first pull of 1000 items, the 5000-item workspace and
the 100 syncs of the endurance run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .endurance import EnduranceResult, run_endurance
from .harness import Servers
from .report import render, update_docs
from .scenarios import SizeResult, ThroughputResult, run_size, run_throughput

REPO_ROOT = Path(__file__).resolve().parents[1]


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("sizes are whole numbers, e.g. 10,100,1000") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("sizes must be at least 1")
    return sizes


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=[10, 100, 1000, 5000])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each incremental case")
    parser.add_argument("--history", type=int, default=300, help="commits in the backup history")
    parser.add_argument(
        "--cli-fresh-max",
        type=int,
        default=1000,
        help="largest size at which the bare CLI's (quadratic) first pull is run",
    )
    parser.add_argument(
        "--naive-max", type=int, default=5000, help="largest size the naive script runs at"
    )
    parser.add_argument("--throughput-workspaces", type=int, default=10)
    parser.add_argument("--throughput-items", type=int, default=100)
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument(
        "--endurance-syncs",
        type=int,
        default=100,
        help="syncs in a row for the memory check (0: none)",
    )
    parser.add_argument("--endurance-items", type=int, default=100)
    parser.add_argument(
        "--full-pulls",
        action="store_true",
        help="the service pulls in full every time (FULL_PULL_INTERVAL_SECONDS=0): the "
        "figures from before narrowed pulls",
    )
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temporary one)")
    parser.add_argument(
        "--update-docs", action="store_true", help="write the report into docs/performance.md"
    )
    args = parser.parse_args(argv)
    shown_args = " ".join(argv if argv is not None else sys.argv[1:]) or "(defaults)"

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wgs-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    load_before = _load()
    results: list[SizeResult] = []
    throughput: ThroughputResult | None = None
    endurance: EnduranceResult | None = None
    try:
        service_env = {"FULL_PULL_INTERVAL_SECONDS": "0"} if args.full_pulls else {}
        with Servers(workdir, service_env) as servers:
            log(f"servers up; working in {workdir}")
            for size in args.sizes:
                results.append(
                    run_size(
                        servers,
                        size,
                        workdir,
                        rounds=args.rounds,
                        history=args.history,
                        cli_fresh_max=args.cli_fresh_max,
                        naive_max=args.naive_max,
                        log=log,
                    )
                )
            if not args.no_throughput:
                throughput = run_throughput(
                    servers,
                    workdir,
                    workspaces=args.throughput_workspaces,
                    items=args.throughput_items,
                    log=log,
                )
            if args.endurance_syncs > 0:
                endurance = run_endurance(
                    servers,
                    workdir,
                    syncs=args.endurance_syncs,
                    items=args.endurance_items,
                    log=log,
                )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(
        results,
        throughput,
        endurance=endurance,
        load_before=load_before,
        load_after=_load(),
        elapsed=time.monotonic() - started,
        args=shown_args,
    )
    print(report)
    if args.update_docs:
        update_docs(REPO_ROOT / "docs" / "performance.md", report)
        log("docs/performance.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
