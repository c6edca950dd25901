"""Copying a validated export into the work tree, touching only Windmill's files.

The work tree starts as the remote branch's tip, which may hold files people
added (a README, CI config). Only paths that belong to a Windmill export are
"managed": they are made identical to the export, everything else is left
exactly as the remote had it. Nothing here follows a symbolic link.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

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


def scan_export(root: Path, *, max_files: int = 200_000) -> dict[str, str]:
    """Files of an export (relative -> absolute path); refuses all but managed plain files."""
    # os.scandir and plain strings: a sync walks thousands of files, and
    # pathlib's per-path parsing was most of this function's time.
    files: dict[str, str] = {}
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
                    pending.append((entry.path, rel))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    raise UnsafeExportError(f"The export contains a non-regular file ({rel})")
                if not is_managed(rel):
                    raise UnsafeExportError(f"The export contains an unexpected file ({rel})")
                files[rel] = entry.path
                if len(files) > max_files:
                    raise UnsafeExportError(f"The export has more than {max_files} files")
    return files


def managed_files(work_tree: Path) -> set[str]:
    found: set[str] = set()
    if not work_tree.is_dir() or work_tree.is_symlink():
        return found
    for entry in os.scandir(work_tree):
        rel = entry.name
        if entry.is_dir(follow_symlinks=False):
            if rel in MANAGED_DIRS:
                for dirpath, _dirs, filenames in os.walk(entry.path, followlinks=False):
                    found.update(_rel(Path(dirpath) / f, work_tree) for f in filenames)
                    found.update(
                        _rel(Path(dirpath) / d, work_tree)
                        for d in _dirs
                        if os.path.islink(os.path.join(dirpath, d))
                    )
        elif is_managed(rel):
            found.add(rel)
    return found


def mirror(export: Mapping[str, str], work_tree: Path, prefix: str = "") -> None:
    """Make the managed part of ``work_tree/prefix`` identical to ``export``."""
    _ensure_real_dirs(work_tree, PurePosixPath(prefix))
    root = work_tree / prefix
    for rel in sorted(managed_files(root) - export.keys()):
        os.unlink(root / rel)
    _prune_empty_dirs(root)
    checked = {""}  # directories already made real during this call
    for rel, source in export.items():
        parent = posixpath.dirname(rel)
        if parent not in checked:
            _ensure_real_dirs(root, PurePosixPath(parent))
            checked.update(str(p) for p in PurePosixPath(rel).parents)
        _write_if_different(os.path.join(root, rel), _read(source))


def write_file(root: Path, rel: str, data: bytes) -> None:
    """Write ``root/rel`` unless it already holds ``data``; never through a link."""
    _ensure_real_dirs(root, PurePosixPath(rel).parent)
    _write_if_different(os.path.join(root, rel), data)


def _write_if_different(target: str, data: bytes) -> None:
    """Write ``target`` (whose directory is real) unless it already holds ``data``."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            _rmtree(target)
        elif not stat.S_ISREG(st.st_mode) or st.st_size != len(data) or _read(target) != data:
            os.unlink(target)
        else:
            return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _ensure_real_dirs(root: Path, rel_dir: PurePosixPath) -> None:
    current = root
    for part in rel_dir.parts:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            current.mkdir()
            continue
        if not stat.S_ISDIR(st.st_mode):
            # A file (or a link checked out as a file) where we need a directory.
            current.unlink()
            current.mkdir()


def _prune_empty_dirs(work_tree: Path) -> None:
    for top in MANAGED_DIRS:
        root = work_tree / top
        if not root.is_dir() or root.is_symlink():
            continue
        for dirpath, _dirs, _files in os.walk(root, topdown=False):
            if not os.listdir(dirpath):
                os.rmdir(dirpath)


def _rmtree(path: str | Path) -> None:
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.unlink(full)
            else:
                os.rmdir(full)
    os.rmdir(path)


def _check_name(name: str) -> None:
    if (
        name in (".", "..")
        or name.lower() == ".git"
        or "\\" in name
        or any(ord(c) < 32 for c in name)
    ):
        raise UnsafeExportError(f"The export contains an unsafe file name ({name!r})")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
