"""Many syncs in a row: does the service's memory stay flat, do files and packs stay bounded?

Git now runs inside the service (dulwich), so whatever a sync leaves behind
(caches, open pack files, packs on disk) would accumulate in the one
long-lived process. This runs ``syncs`` syncs of one workspace, each with
one item changed (so every sync fetches, stages, commits and pushes), and
reads after each one the service's resident memory, its open file
descriptors and the packs in the target's repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .harness import Servers

Log = Callable[[str], None]
# After warm-up (imports, first caches), growth beyond this over the rest of
# the run would be a leak, not noise.
FLAT_MB = 10.0
WARM_UP = 10


@dataclass
class Sample:
    sync: int
    rss_kb: int
    fds: int
    packs: int


@dataclass
class EnduranceResult:
    syncs: int
    items: int
    samples: list[Sample] = field(default_factory=list)

    def at(self, number: int) -> Sample:
        return self.samples[min(number, len(self.samples)) - 1]

    def growth_mb(self) -> float:
        """Resident memory after the last sync less that after the warm-up."""
        return (self.samples[-1].rss_kb - self.at(WARM_UP).rss_kb) / 1024

    def flat(self) -> bool:
        return self.growth_mb() < FLAT_MB


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def run_endurance(
    servers: Servers, workdir: Path, *, syncs: int, items: int, log: Log
) -> EnduranceResult:
    from .scenarios import Changer  # the same edits as the timed scenarios

    assert servers.service is not None and servers.service.proc is not None
    pid = servers.service.proc.pid
    workspace = f"endurance-{items}"
    servers.emulator.workspace(workspace).seed_synthetic(items, seed=7)
    remote = servers.create_repo(workspace)
    result = EnduranceResult(syncs, items)
    log(f"[endurance] {syncs} syncs of {items} items, one item changed each time")
    servers.sync(workspace, remote, measure=False)
    changer = Changer(servers, workspace)
    # The target's own repository, beside its export directory.
    pack_dir = servers.export_dir(workspace, remote).parent / "repo.git" / "objects" / "pack"
    for number in range(1, syncs + 1):
        changer.change(1)
        servers.sync(workspace, remote, measure=False)
        packs = sum(1 for _ in pack_dir.glob("*.pack"))
        result.samples.append(
            Sample(number, _status_kb(pid, "VmRSS"), len(os.listdir(f"/proc/{pid}/fd")), packs)
        )
        if number % 25 == 0:
            log(f"[endurance] {number} syncs: {result.samples[-1]}")
    return result


def render(result: EnduranceResult) -> list[str]:
    out = ["### Endurance", ""]
    out.append(
        f"{result.syncs} syncs of one workspace of {result.items} items in a row, each with "
        "one item changed (so each one fetches, stages, commits and pushes), read after "
        "each sync from the service's own process."
    )
    out.append("")
    shown = sorted({1, WARM_UP, result.syncs // 2, result.syncs} & set(range(1, result.syncs + 1)))
    out.append("| after sync | " + " | ".join(str(n) for n in shown) + " |")
    out.append("|---|" + "---|" * len(shown))
    out.append(
        "| service resident memory | "
        + " | ".join(f"{result.at(n).rss_kb / 1024:.0f} MB" for n in shown)
        + " |"
    )
    out.append(
        "| open file descriptors | " + " | ".join(str(result.at(n).fds) for n in shown) + " |"
    )
    out.append(
        "| packs in the target's repository | "
        + " | ".join(str(result.at(n).packs) for n in shown)
        + " |"
    )
    peak = max(s.rss_kb for s in result.samples) / 1024
    out.append("")
    out.append(
        f"From sync {WARM_UP} to sync {result.syncs}: {result.growth_mb():+.1f} MB "
        f"(highest after any sync: {peak:.0f} MB); at most {max(s.packs for s in result.samples)} "
        f"packs and {max(s.fds for s in result.samples)} open descriptors."
    )
    out.append("")
    return out


def target_line(result: EnduranceResult) -> str:
    verdict = "met" if result.flat() else "**not met**"
    return (
        f"- service RSS flat over {result.syncs} syncs (less than {FLAT_MB:.0f} MB of growth "
        f"after the first {WARM_UP}): {result.growth_mb():+.1f} MB — {verdict}"
    )
