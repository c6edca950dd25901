"""What a Windmill export may hold, and which paths of a backup are Windmill's.

The backup branch may hold files people added (a README, CI config). Only
paths that belong to a Windmill export are "managed": staging (git/trees.py)
makes them identical to the export and leaves everything else exactly as the
remote had it. The export itself is checked before anything reads it: plain
files at managed paths only, no link, no odd name.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from gitsync.errors import UnsafeExportError

# Top-level directories a Windmill export writes, and root-level files.
MANAGED_DIRS = frozenset({"f", "u", "g", "users", "groups", "dependencies", "migrations", "ui"})
MANAGED_ROOT_FILES = frozenset(
    {"wmill.yaml", "wmill-lock.yaml", "settings.yaml", "encryption_key.yaml"}
)
MANAGED_ROOT_PATTERNS = ("*.resource-type.yaml", "*.resource-type.json")


def is_managed(rel: str) -> bool:
    # Plain string splitting (what PurePosixPath.parts gives for these
    # relative paths): called once per file of every tree a sync builds.
    parts = [part for part in rel.split("/") if part and part != "."]
    if not parts:
        return False
    if len(parts) > 1:
        return parts[0] in MANAGED_DIRS
    name = parts[0]
    return name in MANAGED_ROOT_FILES or any(
        fnmatch.fnmatch(name, p) for p in MANAGED_ROOT_PATTERNS
    )


@dataclass(frozen=True)
class Snapshot:
    """The export as one walk saw it: its files, their stats, its directories."""

    files: dict[str, str]  # relative -> absolute path
    stats: dict[str, os.stat_result]
    dirs: tuple[str, ...]


def scan_export(root: Path, *, max_files: int = 200_000) -> dict[str, str]:
    """Files of an export (relative -> absolute path); refuses all but managed plain files."""
    return snapshot_export(root, max_files=max_files).files


def snapshot_export(root: Path, *, max_files: int = 200_000) -> Snapshot:
    """``scan_export``, with each file's stat and the directories.

    One walk serves the stage step (a stat says whether a file must be read
    again, file_index.py) and the record the next sync compares the export
    with (backup/skip.py): a sync walked the 12,800 files of a 5000-item
    export four times.
    """
    # os.scandir and plain strings: a sync walks thousands of files, and
    # pathlib's per-path parsing was most of this function's time.
    files: dict[str, str] = {}
    stats: dict[str, os.stat_result] = {}
    dirs: list[str] = []
    pending = [(os.fspath(root), "")]
    while pending:
        directory, rel_dir = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                _check_name(entry.name)
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if entry.is_symlink():
                    raise UnsafeExportError(
                        f"The export contains a symbolic link ({rel}); refusing it"
                    )
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(rel)
                    pending.append((entry.path, rel))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    raise UnsafeExportError(f"The export contains a non-regular file ({rel})")
                if not is_managed(rel):
                    raise UnsafeExportError(f"The export contains an unexpected file ({rel})")
                files[rel] = entry.path
                stats[rel] = entry.stat(follow_symlinks=False)
                if len(files) > max_files:
                    raise UnsafeExportError(f"The export has more than {max_files} files")
    return Snapshot(files, stats, tuple(dirs))


def _check_name(name: str) -> None:
    if (
        name in (".", "..")
        or name.lower() == ".git"
        or "\\" in name
        or any(ord(c) < 32 for c in name)
    ):
        raise UnsafeExportError(f"The export contains an unsafe file name ({name!r})")
