"""The benchmark's Markdown: the machine, the tables, the targets."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .endurance import EnduranceResult
from .endurance import render as render_endurance
from .endurance import target_line as endurance_target
from .scenarios import SizeResult, ThroughputResult

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

ROWS = (
    ("cli_fresh", "bare CLI: first pull (empty directory)"),
    ("cli_nochange", "bare CLI: pull, nothing changed"),
    ("cli_one", "bare CLI: pull, one item changed"),
    ("cli_ten", "bare CLI: pull, ten items changed"),
    ("naive", "naive script: clone, pull, add, commit, push"),
    ("svc_first", "service: first sync"),
    ("svc_nochange", "service: sync, nothing changed"),
    ("svc_one", "service: sync, one item changed"),
    ("svc_ten", "service: sync, ten items changed"),
)


def machine() -> list[str]:
    def first_line(argv: Sequence[str]) -> str:
        try:
            out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10).stdout
            return out.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return [
        f"CPU: {model}, {os.cpu_count()} logical CPUs (nproc)",
        f"Memory: {mem_kb / 2**20:.1f} GiB",
        f"OS: {platform.system()} {platform.release()}",
        f"Node {first_line(['node', '--version'])}, {first_line(['git', '--version'])}, "
        f"Python {platform.python_version()}",
    ]


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mb(kb: int | None) -> str:
    return "-" if not kb else f"{kb / 1024:.0f} MB"


def render(
    results: Sequence[SizeResult],
    throughput: ThroughputResult | None,
    *,
    endurance: EnduranceResult | None = None,
    load_before: str,
    load_after: str,
    elapsed: float,
    args: str,
) -> str:
    sizes = [r.size for r in results]
    by_size = {r.size: r for r in results}
    head = "| | " + " | ".join(f"{n} items" for n in sizes) + " |"
    rule = "|---|" + "---|" * len(sizes)
    out: list[str] = []
    out.append(
        f"Run on {datetime.date.today().isoformat()} with `python -m bench {args}`, "
        f"{elapsed / 60:.1f} minutes in all."
    )
    out.append("")
    out.append("Machine:")
    out.append("")
    out.extend(f"- {line}" for line in machine())
    out.append(f"- Load average (1, 5, 15 min) before: {load_before}; after: {load_after}")
    out.append("")

    out.append("### Workspaces")
    out.append("")
    out.append(head)
    out.append(rule)
    out.append("| files the CLI writes | " + " | ".join(str(r.files) for r in results) + " |")
    out.append(
        "| wmill-lock.yaml entries | " + " | ".join(str(r.lock_entries) for r in results) + " |"
    )
    out.append(
        "| commits in the backup history | "
        + " | ".join(str(r.history_commits) for r in results)
        + " |"
    )
    out.append(
        "| service's first sync wrote, file for file, what the bare CLI's first pull wrote | "
        + " | ".join(
            "not compared" if r.identical is None else ("yes" if r.identical else "**NO**")
            for r in results
        )
        + " |"
    )
    out.append("")
    out.extend(_secret_scan_share(results))

    out.append("### Times")
    out.append("")
    out.append(
        "Median wall seconds, and in parentheses CPU seconds (user + system, "
        "the service's or the command's children included)."
    )
    out.append("")
    out.append(head)
    out.append(rule)
    for key, label in ROWS:
        cells = []
        for r in results:
            wall, cpu = r.median(key), r.median(key, "cpu")
            runs = len(r.runs.get(key, []))
            cells.append("-" if wall is None else f"{_s(wall)} ({_s(cpu)})" + _n(runs))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")

    out.append("### Ratios")
    out.append("")
    out.append("Of median wall times, and in parentheses of median CPU times.")
    out.append("")
    out.append(head[:-1] + "| target |")
    out.append(rule + "---|")

    def ratio_row(label: str, a: str, b: str, target: str = "") -> None:
        cells = []
        for r in results:
            wall = _ratio(r.median(a), r.median(b))
            cpu = _ratio(r.median(a, "cpu"), r.median(b, "cpu"))
            cells.append("-" if wall is None else f"{_x(wall)} ({_x(cpu)})")
        out.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    ratio_row(
        "service no change ÷ bare CLI no change",
        "svc_nochange",
        "cli_nochange",
        "≤ 0.3x at 1000, ≤ 0.15x at 5000",
    )
    ratio_row("service one item ÷ bare CLI no change", "svc_one", "cli_nochange", "≤ 1.3x at 1000")
    ratio_row(
        "service one item ÷ bare CLI one item",
        "svc_one",
        "cli_one",
        "≤ 0.3x at 1000, ≤ 0.15x at 5000",
    )
    ratio_row("service ten items ÷ bare CLI ten items", "svc_ten", "cli_ten", "≤ 0.5x at 1000")
    ratio_row("naive ÷ service one item", "naive", "svc_one", "≥ 3x at 1000")
    ratio_row("naive ÷ service no change", "naive", "svc_nochange", "≥ 3x at 1000")
    ratio_row("bare CLI first pull ÷ service first sync", "cli_fresh", "svc_first")
    growth = []
    previous: SizeResult | None = None
    for r in results:
        if previous is None:
            growth.append("-")
        else:
            wall = _ratio(r.median("svc_first"), previous.median("svc_first"))
            cpu = _ratio(r.median("svc_first", "cpu"), previous.median("svc_first", "cpu"))
            growth.append(f"{_x(wall)} ({_x(cpu)}) for {r.size / previous.size:.0f}x the items")
        previous = r
    out.append(
        "| service first sync ÷ the previous size's | "
        + " | ".join(growth)
        + " | 1000 → 5000: ≤ about 5x |"
    )
    out.append("")

    out.append("### Memory")
    out.append("")
    out.append(
        "Peak resident memory. The service: its own process (waitress; the same "
        "executable), from the kernel's high-water mark; its children (node, the CLI): all of "
        "them at once, sampled every 30 ms; a bare command: its largest process."
    )
    out.append("")
    out.append(head[:-1] + "| target |")
    out.append(rule + "---|")
    out.append(
        "| service, during its first sync | "
        + " | ".join(_mb(r.peak("svc_first", "service_kb")) for r in results)
        + " | < 150 MB at 5000 |"
    )
    out.append(
        "| service, during any sync | "
        + " | ".join(
            _mb(max((run.service_kb for runs in r.runs.values() for run in runs), default=0))
            for r in results
        )
        + " | |"
    )
    out.append(
        "| service's children, first sync | "
        + " | ".join(_mb(r.peak("svc_first", "children_kb")) for r in results)
        + " | |"
    )
    out.append(
        "| service's children, one item changed | "
        + " | ".join(_mb(r.peak("svc_one", "children_kb")) for r in results)
        + " | < 150 MB at 5000 |"
    )
    out.append(
        "| service's children, other syncs | "
        + " | ".join(
            _mb(max(r.peak(k, "children_kb") or 0 for k in ("svc_nochange", "svc_one", "svc_ten")))
            for r in results
        )
        + " | |"
    )
    out.append(
        "| bare CLI, first pull | "
        + " | ".join(_mb(r.peak("cli_fresh", "peak_kb")) for r in results)
        + " | |"
    )
    out.append(
        "| bare CLI, pull with nothing changed | "
        + " | ".join(_mb(r.peak("cli_nochange", "peak_kb")) for r in results)
        + " | |"
    )
    out.append("")

    if throughput is not None:
        t = throughput
        out.append("### Throughput")
        out.append("")
        out.append(
            f"First syncs of {t.workspaces} workspaces of {t.items} items, each to its own "
            "repository (the service runs at most `MAX_CONCURRENT_SYNCS`, 4 by default, at once)."
        )
        out.append("")
        out.append("| | wall s | CPU s | service peak | children peak (all at once) |")
        out.append("|---|---|---|---|---|")
        for label, run in (("one after another", t.sequential), ("all at once", t.concurrent)):
            out.append(
                f"| {label} | {_s(run.wall)} | {_s(run.cpu)} | {_mb(run.service_kb)} "
                f"| {_mb(run.children_kb)} |"
            )
        speedup = _ratio(t.sequential.wall, t.concurrent.wall)
        out.append("")
        out.append(f"All at once is {_x(speedup)} faster than one after another (wall).")
        out.append("")

    if endurance is not None:
        out.extend(render_endurance(endurance))

    out.append("### Targets")
    out.append("")
    out.extend(_targets(by_size))
    if endurance is not None:
        out.append(endurance_target(endurance))
    notes = [note for r in results for note in r.notes]
    if notes:
        out.append("")
        out.append("Notes:")
        out.append("")
        out.extend(f"- {note}" for note in notes)
    return "\n".join(out) + "\n"


def _n(runs: int) -> str:
    return "" if runs <= 1 else f" x{runs}"


def _targets(by_size: dict[int, SizeResult]) -> list[str]:
    lines: list[str] = []

    def check(label: str, value: float | None, ok: bool | None, shown: str) -> None:
        verdict = "not measured" if value is None else ("met" if ok else "**not met**")
        lines.append(f"- {label}: {shown} — {verdict}")

    r1000 = by_size.get(1000)
    r5000 = by_size.get(5000)
    if r1000:
        v = _ratio(r1000.median("svc_nochange"), r1000.median("cli_nochange"))
        c = _ratio(r1000.median("svc_nochange", "cpu"), r1000.median("cli_nochange", "cpu"))
        check(
            "no-change sync ≤ 0.3x the bare CLI's no-change pull at 1000 items "
            "(the CLI is not started)",
            v,
            v is not None and v <= 0.3,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = _ratio(r1000.median("naive"), r1000.median("svc_nochange"))
        c = _ratio(r1000.median("naive", "cpu"), r1000.median("svc_nochange", "cpu"))
        check(
            "the naive script ≥ 3x slower than the service's no-change sync at 1000 items",
            v,
            v is not None and v >= 3,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = _ratio(r1000.median("svc_one"), r1000.median("cli_nochange"))
        c = _ratio(r1000.median("svc_one", "cpu"), r1000.median("cli_nochange", "cpu"))
        check(
            "one-item change ≤ 1.3x (the bare CLI's no-change pull) at 1000 items",
            v,
            v is not None and v <= 1.3,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = _ratio(r1000.median("naive"), r1000.median("svc_one"))
        c = _ratio(r1000.median("naive", "cpu"), r1000.median("svc_one", "cpu"))
        check(
            "≥ 3x faster than the naive approach at 1000 items with history (one-item change)",
            v,
            v is not None and v >= 3,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = _ratio(r1000.median("svc_one"), r1000.median("cli_one"))
        c = _ratio(r1000.median("svc_one", "cpu"), r1000.median("cli_one", "cpu"))
        check(
            "one-item change ≤ 0.3x the bare CLI's pull of the same change at 1000 items",
            v,
            v is not None and v <= 0.3,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = _ratio(r1000.median("svc_ten"), r1000.median("cli_ten"))
        c = _ratio(r1000.median("svc_ten", "cpu"), r1000.median("cli_ten", "cpu"))
        check(
            "ten-item change ≤ 0.5x the bare CLI's pull of the same change at 1000 items",
            v,
            v is not None and v <= 0.5,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = r1000.median("svc_first")
        check(
            "first sync of 1000 items ≤ 10 s",
            v,
            v is not None and v <= 10,
            f"{_s(v)} s wall, {_s(r1000.median('svc_first', 'cpu'))} s CPU",
        )
    if r1000 and r5000:
        v = _ratio(r5000.median("svc_first"), r1000.median("svc_first"))
        c = _ratio(r5000.median("svc_first", "cpu"), r1000.median("svc_first", "cpu"))
        check(
            "first sync 1000 → 5000 items costs at most about 5x more",
            v,
            v is not None and v <= 5.5,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
    if r5000:
        v = _ratio(r5000.median("svc_nochange"), r5000.median("cli_nochange"))
        c = _ratio(r5000.median("svc_nochange", "cpu"), r5000.median("cli_nochange", "cpu"))
        check(
            "no-change sync ≤ 0.15x the bare CLI's no-change pull at 5000 items",
            v,
            v is not None and v <= 0.15,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = r5000.peak("svc_first", "service_kb")
        check(
            "service RSS under 150 MB during a 5000-item sync",
            v,
            v is not None and v < 150 * 1024,
            _mb(v),
        )
        v = _ratio(r5000.median("svc_one"), r5000.median("cli_one"))
        c = _ratio(r5000.median("svc_one", "cpu"), r5000.median("cli_one", "cpu"))
        check(
            "one-item change ≤ 0.15x the bare CLI's pull of the same change at 5000 items",
            v,
            v is not None and v <= 0.15,
            f"{_x(v)} wall, {_x(c)} CPU",
        )
        v = r5000.peak("svc_one", "children_kb")
        check(
            "the service's children under 150 MB during a one-item change at 5000 items",
            v,
            v is not None and v < 150 * 1024,
            _mb(v),
        )
    return lines


def update_docs(path: Path, text: str) -> None:
    """Replace the generated part of ``path`` (between the bench markers)."""
    doc = path.read_text() if path.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in doc or END not in doc:
        doc = doc.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    before, rest = doc.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    path.write_text(f"{before}{BEGIN}\n{text}{END}{after}")


def _secret_scan_share(results: list[SizeResult]) -> list[str]:
    """What the secret scan (issue #17) weighs: all files on a first sync, one on a change."""
    lines = []
    for r in results:
        if r.scan_all is None or r.scan_one is None:
            continue
        first, one = r.median("svc_first"), r.median("svc_one")
        share_first = f" ({r.scan_all / first:.1%} of the first sync)" if first else ""
        share_one = f" ({r.scan_one / one:.2%} of a one-item change)" if one else ""
        lines.append(
            f"- {r.size} items: the secret scan takes {r.scan_all:.2f} s for every file"
            f"{share_first}, {r.scan_one * 1000:.1f} ms for one script{share_one}."
        )
    if lines:
        lines = ["Secret scan (only the files a sync adds or changes are scanned):", "", *lines, ""]
    return lines
