"""Git for one backup target, in-process with dulwich: no git binary, no child process.

The repository is bare and nothing from the remote is ever written to disk
as files (only ``/restore`` exports a tree, through validated paths). Trees
are built in memory from the export (``trees``), every commit's parent is
explicit, and a push is a compare-and-swap of ``refs/heads/<branch>`` from
the tip the commit was built on: never forced (``transport``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dulwich.objects import Commit, ObjectID, ShaFile, Tag
from dulwich.refs import Ref
from dulwich.repo import Repo

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import GitError
from gitsync.git import repair, trees, walk
from gitsync.git.file_index import FileIndex
from gitsync.git.remote_branch import RemoteBranch
from gitsync.git.transport import PushOutcome
from gitsync.git.trees import EMPTY_TREE, Change, Entry, RepositoryCorrupt, local_store
from gitsync.secrets import Redactor, Secret

__all__ = [
    "EMPTY_TREE_HEX",
    "Change",
    "GitRepo",
    "Identity",
    "PushOutcome",
    "RepositoryCorrupt",
    "is_corruption",
]

log = logging.getLogger(__name__)

EMPTY_TREE_HEX = EMPTY_TREE.decode()
# Who moved a ref, in the service's own reflogs (never read from any config).
_REFLOG_IDENTITY = b"windmill-git-sync <windmill-git-sync@localhost>"
# New packs per sync pile up (open files, slower lookups): merged beyond this.
MAX_PACKS = 16


@dataclass(frozen=True)
class Identity:
    name: str
    email: str


@dataclass
class GitRepo:
    """A bare repository for one (remote, branch) target."""

    settings: Settings
    git_dir: Path
    remote_url: str
    branch: str
    token: Secret
    username: str
    redactor: Redactor
    deadline: Deadline
    _repo: Repo | None = field(default=None, init=False, repr=False)
    remote_branch: RemoteBranch = field(init=False, repr=False)
    # Objects built for the next commit: written as one pack when a ref needs them.
    _pending: dict[ObjectID, ShaFile] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.remote_branch = RemoteBranch(
            self.settings,
            self.remote_url,
            self.branch,
            self.token,
            self.username,
            self.redactor,
            self.deadline,
        )

    @property
    def remote_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    @property
    def local_ref(self) -> str:
        return f"refs/heads/{self.branch}"

    def another_handle(self) -> GitRepo:
        """The same repository through its own handle, for work in another thread."""
        return dataclasses.replace(self)

    @property
    def repo(self) -> Repo:
        if self._repo is None:
            with local_store("Opening the repository"):
                self._repo = Repo(str(self.git_dir))
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None
        self.remote_branch.close()

    def __enter__(self) -> GitRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, sha: ObjectID) -> ShaFile:
        found = self._pending.get(sha)
        return found if found is not None else self.repo.object_store[sha]

    # -- local repository --------------------------------------------------

    def ensure_initialized(self) -> None:
        """Create the bare repository, or clear what an interrupted run left behind."""
        if not (self.git_dir / "HEAD").is_file():
            self.close()
        repair.initialize(self.git_dir)

    def recover_after_crash(self) -> None:
        """Repair what a killed run may have left; move a broken repository aside."""
        self.close()
        repair.recover(self.git_dir)

    def peel(self, sha: ObjectID) -> Commit:
        obj = self.get(sha)
        while isinstance(obj, Tag):
            obj = self.get(obj.object[1])
        if not isinstance(obj, Commit):
            raise KeyError(sha)
        return obj

    def rev_parse(self, ref: str) -> str | None:
        with local_store("Reading a ref"):
            sha = self.repo.refs.as_dict().get(_ref(ref))
        return sha.decode() if sha else None

    def has_commit(self, commit: str) -> bool:
        with local_store("Reading the repository"):
            try:
                return isinstance(self.get(_oid(commit)), Commit)
            except KeyError:
                return False

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Is ``ancestor`` in the history of ``descendant``? Fetches history if it must."""
        with local_store("Reading the history"):
            found = walk.reaches(self.get, _oid(descendant), _oid(ancestor))
        if found is None:
            # The walk ran into the edge of a shallow fetch: get the branch's
            # whole history (trees and commits only) and look again.
            log.info("fetching the history of %s to compare commits", self.branch)
            self.remote_branch.fetch_history(self.repo)
            with local_store("Reading the history"):
                found = walk.reaches(self.get, _oid(descendant), _oid(ancestor))
        return bool(found)

    def known_ancestor(self, ancestor: str, descendant: str) -> bool | None:
        """Like ``is_ancestor``, from what is here only: None when history here is too short."""
        with local_store("Reading the history"):
            return walk.reaches(self.get, _oid(descendant), _oid(ancestor))

    def known_history(self, commit: str) -> set[str]:
        """The commits of ``commit``'s history present here; no fetch."""
        with local_store("Reading the history"):
            return {c.decode() for c in walk.known_history(self.get, _oid(commit))}

    def first_parent(self, commit: str) -> str | None:
        with local_store("Reading a commit"):
            parents = self.peel(_oid(commit)).parents
        return parents[0].decode() if parents else None

    def refs_under(self, prefix: str) -> dict[str, str]:
        """Every ref whose name starts with ``prefix`` (full names), with its commit."""
        base = prefix.rstrip("/")
        with local_store("Reading a ref"):
            found = self.repo.refs.as_dict(_ref(base))
        return {f"{base}/{name.decode()}": sha.decode() for name, sha in found.items()}

    def update_ref(self, ref: str, new: str, old: str | None = None, *, reason: str) -> None:
        self._flush()
        with local_store("Updating a ref"):
            done = self.repo.refs.set_if_equals(
                _ref(ref),
                _oid(old) if old else None,
                _oid(new),
                committer=_REFLOG_IDENTITY,
                message=reason.encode(),
            )
        if not done:
            raise GitError(f"could not update {ref}: it changed under the service")

    def delete_ref(self, ref: str, old: str | None = None) -> None:
        """Delete ``ref`` (if it still is ``old``, when given)."""
        with local_store("Updating a ref"):
            self.repo.refs.remove_if_equals(
                _ref(ref),
                _oid(old) if old else None,
                committer=_REFLOG_IDENTITY,
                message=b"windmill-git-sync",
            )

    def _flush(self) -> None:
        if not self._pending:
            return
        store = self.repo.object_store
        objects = [(o, None) for sha, o in self._pending.items() if sha not in store]
        self._pending.clear()
        if not objects:
            return
        try:
            store.add_objects(objects)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise GitError(
                    "Git commit failed: no space left on the service's disk", detail=str(exc)
                ) from None
            raise
        if len(store.packs) > MAX_PACKS:
            # One pack per sync would pile up: open files, slower lookups.
            started = time.monotonic()
            store.repack()
            log.info("repacked %s in %.2f s", self.git_dir.name, time.monotonic() - started)

    # -- trees and commits --------------------------------------------------

    def stage(
        self,
        base: str | None,
        export: Mapping[str, str],
        prefix: str,
        readme: str,
        managed: Callable[[str], bool],
        index: FileIndex | None = None,
        stats: Mapping[str, os.stat_result] | None = None,
    ) -> str:
        """The tree of ``base`` with the export (and README) in place; built in memory."""
        with local_store("Preparing the commit"):
            try:
                base_tree = self.peel(_oid(base)).tree if base else None
                tree = trees.stage_export(
                    self.get,
                    base_tree,
                    export,
                    prefix,
                    readme,
                    self._pending,
                    managed,
                    index,
                    stats,
                )
            except KeyError as exc:
                raise GitError(
                    "Preparing the commit failed: an object of the base commit is missing",
                    detail=str(exc),
                ) from None
        return tree.decode()

    def tree_of(self, commit: str | None) -> str:
        if commit is None:
            return EMPTY_TREE_HEX
        with local_store("Reading a commit"):
            return str(self.peel(_oid(commit)).tree.decode())

    def list_files(self, commit: str | None) -> list[str]:
        if commit is None:
            return []
        with local_store("Reading a tree"):
            return list(trees.entries_of(self.get, self.peel(_oid(commit)).tree))

    def ls_tree(self, tree: str) -> dict[str, Entry]:
        with local_store("Reading a tree"):
            return trees.entries_of(self.get, _oid(tree))

    def diff_trees(self, old_tree: str, new_tree: str) -> list[Change]:
        with local_store("Comparing trees"):
            return trees.diff(self.get, _oid(old_tree), _oid(new_tree))

    def tree_with(self, base_tree: str, updates: dict[str, Entry | None]) -> str:
        with local_store("Building a tree"):
            return trees.with_updates(self.get, _oid(base_tree), updates, self._pending).decode()

    def commit_tree(
        self, tree: str, parent: str | None, message: str, author: Identity, committer: Identity
    ) -> str:
        commit = Commit()
        commit.tree = _oid(tree)
        commit.parents = [_oid(parent)] if parent else []
        commit.author = f"{author.name} <{author.email}>".encode()
        commit.committer = f"{committer.name} <{committer.email}>".encode()
        commit.author_time = commit.commit_time = int(time.time())
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = message.encode()
        self._pending[commit.id] = commit
        return commit.id.decode()

    # -- remote ------------------------------------------------------------

    def fetch_tip(self) -> str | None:
        """The branch's commit on the remote (fetched if new here), or None if absent."""
        tip = self.remote_branch.fetch_tip(self.repo)
        if tip is None:
            self.delete_ref(self.tracking_ref)
            return None
        self.update_ref(self.tracking_ref, tip.decode(), reason="windmill-git-sync: remote tip")
        return tip.decode()

    def push(self, commit: str, expected: str | None) -> PushOutcome:
        """Make the remote branch ``commit`` if it still is ``expected`` (None: absent)."""
        if expected is not None and not self.is_ancestor(expected, commit):
            # Pushing it would replace the remote's history on hosts that allow that.
            raise GitError("Git push refused: the commit does not build on the remote tip")
        self._flush()
        return self.remote_branch.push(
            self.repo, _oid(commit), _oid(expected) if expected else None
        )


def _oid(sha: str) -> ObjectID:
    return ObjectID(sha.encode("ascii"))


def _ref(name: str) -> Ref:
    return Ref(name.encode())


def is_corruption(exc: Exception) -> bool:
    """Did this failure come from a damaged local repository?"""
    return isinstance(exc, RepositoryCorrupt)
