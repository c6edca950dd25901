"""Repairing the service's own repository after a crash or damage.

Callers hold the target's lock, so a lock file or temporary pack found here
belongs to a run that was killed: dulwich never cleans them up, and a stale
ref lock would fail every later update (docs: dulwich.md section 9).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dulwich.objects import Commit, ObjectID, ShaFile, Tag
from dulwich.repo import Repo

from gitsync.git import trees, walk
from gitsync.git.trees import RepositoryCorrupt

log = logging.getLogger(__name__)

# What the git binary of earlier versions kept beside the repository.
_OLD_GIT_FILES = ("index", "scratch-index", "export-index")


def remove_debris(git_dir: Path) -> None:
    """Delete the lock files and half-written packs a killed run left behind."""
    found = list(git_dir.glob("*.lock"))
    for sub in ("refs", "logs", "objects"):
        if (git_dir / sub).is_dir():
            found.extend((git_dir / sub).rglob("*.lock"))
    objects = git_dir / "objects"
    found.extend(objects.glob("tmp_pack_*"))
    found.extend(objects.glob("incoming-*"))
    found.extend((objects / "pack").glob("tmp*"))
    found.extend(git_dir / name for name in _OLD_GIT_FILES)
    for path in found:
        if path.is_file():
            log.warning("removing stale git file %s", path.relative_to(git_dir))
            path.unlink(missing_ok=True)


def connectivity_problem(repo: Repo) -> str | None:
    """What ``git fsck --connectivity-only`` would find wrong, roughly; None if fine."""

    def get(sha: ObjectID) -> ShaFile:
        return repo.object_store[sha]

    try:
        shallow = repo.get_shallow()
        for name, sha in repo.refs.as_dict().items():
            if name == b"HEAD" or not name.startswith(b"refs/"):
                continue
            commit = get(sha)
            while isinstance(commit, Tag):
                commit = get(commit.object[1])
            if not isinstance(commit, Commit):
                return f"{name.decode(errors='replace')} does not point at a commit"
            # Every tree of each tip (blobs may be left out by the fetch filter)...
            trees.entries_of(get, commit.tree)
            # ...and its history, down to where a shallow fetch cut it.
            for _ in walk.history(get, commit.id, shallow):
                pass
    except (KeyError, RepositoryCorrupt, *trees.DAMAGE) as exc:
        return f"{type(exc).__name__}: {exc}"[:2000]
    return None
