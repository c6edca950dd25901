"""The scratch folder a narrowed pull runs in: only the affected items' files, then moved back.

The CLI walks and pattern-matches the whole folder it pulls into; given
only the files of the items that changed (and the global kinds), it walks
what changed. Its results are then moved into the export: written files
replace the export's, deleted ones are removed, the rest is left alone.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from gitsync.windmill.narrow import GLOBAL_DIRS, glob_regex
from gitsync.windmill.narrow_lock import LOCK_FILE, LockSplit


def select_files(export_dir: Path, patterns: Iterable[str]) -> set[str]:
    """The export's files the CLI reads in a narrowed pull (relative paths).

    Those the patterns match, every root file (wmill.yaml, wmill-lock.yaml,
    resource types, settings) and the global kinds' directories; found
    without walking the rest of the export.
    """
    found: set[str] = set()
    with os.scandir(export_dir) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):
                found.add(entry.name)
    for name in GLOBAL_DIRS:
        found.update(_walk(export_dir, name))
    for pattern in patterns:
        found.update(_matching(export_dir, pattern))
    return found


def _walk(root: Path, rel: str) -> Iterator[str]:
    top = root / rel
    if not top.is_dir() or top.is_symlink():
        return
    for directory, dirs, files in os.walk(top):
        rel_dir = os.path.relpath(directory, root)
        for name in files:
            if not os.path.islink(os.path.join(directory, name)):
                yield f"{rel_dir}/{name}"
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]


def _matching(root: Path, pattern: str) -> Iterator[str]:
    regex = glob_regex(pattern)
    segments = pattern.split("/")
    literal = 0
    while literal < len(segments) - 1 and not set("*?") & set(segments[literal]):
        literal += 1
    head = "/".join(segments[:literal])
    rest = segments[literal:]
    if "**" in rest:
        candidates: Iterable[str] = _walk(root, head)
    else:
        candidates = _level(root, head, len(rest))
    for rel in candidates:
        if regex.match(rel):
            yield rel


def _level(root: Path, head: str, depth: int) -> Iterator[str]:
    """Files exactly ``depth`` levels under ``head``."""
    try:
        with os.scandir(root / head) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        rel = f"{head}/{entry.name}"
        if depth == 1:
            if entry.is_file(follow_symlinks=False):
                yield rel
        elif entry.is_dir(follow_symlinks=False):
            yield from _level(root, rel, depth - 1)


def prepare_scratch(
    export_dir: Path, scratch: Path, patterns: Iterable[str], lock: LockSplit | None = None
) -> set[str]:
    """A fresh ``scratch`` holding copies of the export's files a narrowed pull reads.

    With ``lock``, its wmill-lock.yaml holds only the entries of the changed
    items (``LockSplit``), not the export's whole lock file.
    """
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    selected = select_files(export_dir, patterns)
    for rel in selected:
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if lock is not None and rel == LOCK_FILE:
            target.write_text(lock.narrowed_text())
        else:
            shutil.copyfile(export_dir / rel, target)
    return selected


def apply_scratch(scratch: Path, export_dir: Path, before: set[str]) -> tuple[int, int]:
    """Move the narrowed pull's results into the export: written files, deletions.

    Returns (files written, files deleted). Files the CLI left as they were
    are not touched (their file-index entries stay good).
    """
    after = set(_walk(scratch, "."))
    after = {rel.removeprefix("./") for rel in after}
    deleted = 0
    for rel in sorted(before - after):
        (export_dir / rel).unlink(missing_ok=True)
        deleted += 1
    written = 0
    for rel in sorted(after):
        source, target = scratch / rel, export_dir / rel
        if rel in before and _same_bytes(source, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        written += 1
    return written, deleted


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False
