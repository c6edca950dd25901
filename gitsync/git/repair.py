"""Repairing the service's own repository after a crash or damage.

Callers hold the target's lock, so a lock file or temporary pack found here
belongs to a run that was killed: dulwich never cleans them up, and a stale
ref lock would fail every later update (docs: dulwich.md section 9).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from dulwich.objects import Commit, ObjectID, ShaFile, Tag
from dulwich.repo import Repo

from gitsync.git import trees, walk
from gitsync.git.trees import RepositoryCorrupt, local_store

log = logging.getLogger(__name__)

# What the git binary of earlier versions kept beside the repository.
_OLD_GIT_FILES = ("index", "scratch-index", "export-index")


def initialize(git_dir: Path) -> None:
    """Create the bare repository if it is missing, and clear what a killed run left."""
    if not (git_dir / "HEAD").is_file():
        if git_dir.exists():
            shutil.rmtree(git_dir)
        git_dir.mkdir(parents=True)
        # default_branch given: dulwich would otherwise read init.defaultBranch
        # from the ambient configuration.
        Repo.init_bare(str(git_dir), default_branch=b"main").close()
    remove_debris(git_dir)


def recover(git_dir: Path) -> None:
    """Repair what a killed run may have left; move a broken repository aside.

    If the object store is broken, the repository is kept as
    ``corrupt-<time>.git`` beside it (commits that never reached the remote
    can be salvaged from there) and a fresh one takes its place; the next
    fetch fills it from the remote. No handle on it may be open.
    """
    remove_debris(git_dir)
    with local_store("Opening the repository"):
        repo = Repo(str(git_dir))
    try:
        with local_store("Checking the repository"):
            problem = connectivity_problem(repo)
    finally:
        repo.close()
    if problem is not None:
        aside = git_dir.with_name(f"corrupt-{int(time.time())}.git")
        log.error(
            "repository %s failed fsck; moved to %s and starting afresh",
            git_dir,
            aside.name,
            extra={"detail": problem},
        )
        git_dir.rename(aside)
        initialize(git_dir)


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
