"""Whether a sync's pull may be narrowed to what changed, and running it (see windmill/narrow.py).

After each successful sync the service keeps, beside the pull record, the
digest of every answer the CLI read and of every archive entry
(``NarrowState``, ``narrow-state.json``: digests and paths only). The next
sync narrows its pull only when the skip check found nothing but Windmill
content changed (it then holds a replay: the record, the CLI, the scope and
the export all matched) and every changed answer is one a narrowed pull
carries: the archive itself, the shared UI (always pulled whole) or the
login check. Everything else is a full pull, as before:

* the first sync, or one after a failed or interrupted one (no state: it is
  removed before every pull and written after the sync succeeded);
* a changed CLI, scope, path prefix or export (the skip check's replay is empty);
* a changed file-extension map or list of workspace-specific items (they
  change the local layout of items that did not change);
* an entry, path or scope pattern ``narrow`` does not know, or many changes;
* once every ``FULL_PULL_INTERVAL_SECONDS`` (a day by default): a narrowed
  export that ever diverged would stay so until its items change again (the
  study's trap 12), and a full pull puts it right;
* a narrowed CLI run that fails, or asks anything the replay does not hold.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gitsync.config import Settings
from gitsync.windmill import narrow, narrow_lock
from gitsync.windmill.recorder import Exchange, Request, Upstream
from gitsync.windmill.scratch import apply_scratch, prepare_scratch
from gitsync.windmill.wmill import Scope

log = logging.getLogger(__name__)

STATE_FILE = "narrow-state.json"
SCRATCH_DIR = "narrow-scratch"
_FORMAT = 2  # 2: entry digests of the stored bytes (recorder.zip_entries)
TARBALL = "workspaces/tarball"
# Answers whose change a narrowed pull carries as the full pull does.
_CARRIED = frozenset({TARBALL, "shared_ui/get", "users/whoami"})


def _key(request: Request) -> str:
    return json.dumps(request.to_json(), sort_keys=True)


@dataclass(frozen=True)
class NarrowState:
    exchanges: dict[str, str]  # each request (as JSON) with its answer's digest
    entries: dict[str, str]  # archive entry -> sha256 of its content
    last_full: float  # epoch seconds of the last full pull

    @classmethod
    def load(cls, root: Path) -> NarrowState | None:
        try:
            data = json.loads((root / STATE_FILE).read_text())
            if data.get("format") != _FORMAT:
                return None
            return cls(
                {str(k): str(v) for k, v in data["exchanges"].items()},
                {str(k): str(v) for k, v in data["entries"].items()},
                float(data["last_full"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            log.warning("the narrowed-pull state of %s is unreadable; pulling in full", root)
            return None

    @staticmethod
    def forget(root: Path) -> None:
        (root / STATE_FILE).unlink(missing_ok=True)

    @classmethod
    def remember(
        cls, root: Path, exchanges: list[Exchange], last_full: float
    ) -> NarrowState | None:
        """Keep what a successful pull read; nothing when its archive cannot be narrowed from."""
        tarballs = [e for e in exchanges if e.request.endpoint == TARBALL]
        if len(tarballs) != 1 or tarballs[0].status != 200:
            return None
        try:
            entries = narrow.archive_digests(tarballs[0])
        except narrow.Unsupported:
            return None
        state = cls({_key(e.request): e.digest_once for e in exchanges}, entries, last_full)
        path = root / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(
                {
                    "format": _FORMAT,
                    "last_full": state.last_full,
                    "exchanges": state.exchanges,
                    "entries": state.entries,
                },
                out,
            )
        tmp.replace(path)
        return state


@dataclass(frozen=True)
class Narrowing:
    tarball: Request
    plan: narrow.Plan


def choose(
    settings: Settings,
    state: NarrowState | None,
    replay: dict[Request, Exchange],
    scope: Scope,
    now: float | None = None,
) -> Narrowing | str:
    """The narrowed pull to run, or why the pull is a full one."""
    if settings.full_pull_interval <= 0:
        return "narrowed pulls are off"
    if not replay:
        return "no replay"
    if state is None:
        return "no state from the last sync"
    now = time.time() if now is None else now
    if not 0 <= now - state.last_full < settings.full_pull_interval:
        return "a periodic full pull is due"
    if {_key(r) for r in replay} != state.exchanges.keys():
        return "the CLI's requests differ from the last sync's"
    changed = {r.endpoint for r, e in replay.items() if e.digest_once != state.exchanges[_key(r)]}
    if changed - _CARRIED:
        return "changed: " + ", ".join(sorted(changed - _CARRIED))
    tarballs = [r for r in replay if r.endpoint == TARBALL]
    if len(tarballs) != 1 or replay[tarballs[0]].status != 200:
        return "no workspace archive"
    try:
        # The skip check read the archive's entries once already: only those served are read again.
        archive = replay[tarballs[0]]
        digests = narrow.archive_digests(archive)
        return Narrowing(tarballs[0], narrow.plan(state.entries, archive.body, digests, scope))
    except narrow.Unsupported as exc:
        return str(exc)


def run(
    narrowing: Narrowing,
    *,
    upstream: Upstream,
    replay: dict[Request, Exchange],
    timeout: float,
    root: Path,
    export_dir: Path,
    pull: Callable[[Path, narrow.NarrowingPassThrough], None],
) -> list[Exchange] | None:
    """The narrowed pull into ``export_dir``; the exchanges to record, or None to pull in full.

    ``pull(directory, passthrough)`` runs the CLI in ``directory`` through
    the running pass-through. The export is only changed once the CLI has
    succeeded as planned; while its results move in, the export carries the
    interrupted-pull marker, so a crash there means a full pull next time.
    """
    plan = narrowing.plan
    scratch = root / SCRATCH_DIR
    passthrough = narrow.NarrowingPassThrough(
        upstream, replay, timeout, narrowing.tarball, plan.archive
    )
    try:
        lock = narrow_lock.LockSplit.of(export_dir, plan.items)
        before = prepare_scratch(export_dir, scratch, plan.patterns, lock)
        with passthrough.running():
            passthrough.begin_attempt(first=True)
            pull(scratch, passthrough)
        if not passthrough.served_as_planned():
            log.info("the narrowed pull asked for something unplanned; pulling in full")
            return None
        if lock is not None:
            merged = lock.merge(scratch / narrow_lock.LOCK_FILE)
            if merged is None:
                log.info("the narrowed pull wrote an unexpected wmill-lock.yaml; pulling in full")
                return None
            (scratch / narrow_lock.LOCK_FILE).write_text(merged, encoding="utf-8")
        incomplete = export_dir.with_name(export_dir.name + ".incomplete")
        incomplete.touch()
        written, deleted = apply_scratch(scratch, export_dir, before)
        incomplete.unlink()
        log.info(
            "narrowed pull: %d items, %d patterns; %d files written, %d deleted; %s",
            len(plan.items),
            len(plan.patterns),
            written,
            deleted,
            f"{len(lock.narrowed)} of {len(lock.narrowed) + len(lock.kept)} lock entries given"
            if lock is not None
            else "the whole lock file given",
        )
        return passthrough.exchanges()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.with_name(scratch.name + ".incomplete").unlink(missing_ok=True)
