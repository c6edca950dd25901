"""A sync's coverage: from what the pull already has in hand, kept for syncs that skip the CLI.

The workspace archive the CLI was answered is among the pass-through's
recorded exchanges; the export's files were just listed for staging. A sync
whose pull is skipped (nothing new) answers with the coverage of the last
pull, kept beside the skip check's record.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from gitsync.windmill import coverage
from gitsync.windmill.coverage import Coverage
from gitsync.windmill.recorder import Exchange
from gitsync.windmill.wmill import Scope

log = logging.getLogger(__name__)

COVERAGE_FILE = "coverage.json"


def of_pull(
    exchanges: Iterable[Exchange],
    export_files: Iterable[str],
    scope: Scope,
    held: Collection[str] = (),
) -> Coverage | None:
    """The coverage of a pull; None if its archive is not among ``exchanges``."""
    body = next(
        (
            e.body
            for e in exchanges
            if e.request.endpoint == "workspaces/tarball" and 200 <= e.status < 300
        ),
        None,
    )
    archive = coverage.read_archive(body) if body is not None else None
    if archive is None:
        log.warning("the pull's workspace archive was not recorded; its coverage is unknown")
        return None
    return coverage.compare(
        archive.entries,
        export_files,
        scope,
        skipped_by_policy=coverage.policy_skips(archive, scope),
        held=held,
    )


def remember(root: Path, found: Coverage | None) -> None:
    path = root / COVERAGE_FILE
    if found is None:
        path.unlink(missing_ok=True)
        return
    # Kinds and paths only, as the answer shows them.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(found.to_json())
    tmp.replace(path)


def last(root: Path) -> Coverage | None:
    """The coverage of the target's last pull, if it was kept."""
    path = root / COVERAGE_FILE
    try:
        return Coverage.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        log.warning("the coverage record %s is unreadable; the next pull writes it", path)
        return None
