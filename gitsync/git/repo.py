"""Git for one backup target, in-process with dulwich: no git binary, no child process.

The repository is bare and nothing from the remote is ever written to disk
as files (only ``/restore`` exports a tree, through validated paths). Trees
are built in memory from the export (``trees``), every commit's parent is
explicit, and a push is a compare-and-swap of ``refs/heads/<branch>`` from
the tip the commit was built on: never forced (``transport``).
"""

from __future__ import annotations

import errno
import logging
import shutil
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
from gitsync.git.transport import PushOutcome, Remote
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
# Blobs above this size are not fetched for a sync: it only needs the remote's
# trees (and our README's text), and a "zip bomb" blob never arrives.
SYNC_FETCH_FILTER = b"blob:limit=1048576"
# Far deeper than any backup's history: git's own value for --unshallow.
_ALL_HISTORY = 0x7FFFFFFF
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
    _remote: Remote | None = field(default=None, init=False, repr=False)
    # Objects built for the next commit: written as one pack when a ref needs them.
    _pending: dict[ObjectID, ShaFile] = field(default_factory=dict, init=False, repr=False)

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
        return GitRepo(
            self.settings,
            self.git_dir,
            self.remote_url,
            self.branch,
            self.token,
            self.username,
            self.redactor,
            self.deadline,
        )

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
        if self._remote is not None:
            self._remote.close()
            self._remote = None

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
            if self.git_dir.exists():
                shutil.rmtree(self.git_dir)
            self.git_dir.mkdir(parents=True)
            # default_branch given: dulwich would otherwise read init.defaultBranch
            # from the ambient configuration.
            Repo.init_bare(str(self.git_dir), default_branch=b"main").close()
        repair.remove_debris(self.git_dir)

    def recover_after_crash(self) -> None:
        """Repair what a killed run may have left; move a broken repository aside.

        If the object store is broken, the repository is kept as
        ``corrupt-<time>.git`` beside it (commits that never reached the
        remote can be salvaged from there) and a fresh one takes its place;
        the next fetch fills it from the remote.
        """
        self.close()
        repair.remove_debris(self.git_dir)
        with local_store("Checking the repository"):
            problem = repair.connectivity_problem(self.repo)
        self.close()
        if problem is not None:
            aside = self.git_dir.with_name(f"corrupt-{int(time.time())}.git")
            log.error(
                "repository %s failed fsck; moved to %s and starting afresh",
                self.git_dir,
                aside.name,
                extra={"detail": problem},
            )
            self.git_dir.rename(aside)
            self.ensure_initialized()

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
            self._fetch_history()
            with local_store("Reading the history"):
                found = walk.reaches(self.get, _oid(descendant), _oid(ancestor))
        return bool(found)

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

    def delete_ref(self, ref: str) -> None:
        with local_store("Updating a ref"):
            self.repo.refs.remove_if_equals(
                _ref(ref), None, committer=_REFLOG_IDENTITY, message=b"windmill-git-sync"
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
    ) -> str:
        """The tree of ``base`` with the export (and README) in place; built in memory."""
        with local_store("Preparing the commit"):
            try:
                base_tree = self.peel(_oid(base)).tree if base else None
                tree = trees.stage_export(
                    self.get, base_tree, export, prefix, readme, self._pending, managed, index
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

    def remote(self) -> Remote:
        if self._remote is None:
            self._remote = Remote(
                url=self.remote_url,
                username=self.username,
                token=self.token,
                ca_file=self.settings.git_ssl_cainfo,
                deadline=self.deadline,
                redactor=self.redactor,
                max_fetch_bytes=self.settings.max_fetch_bytes,
            )
        return self._remote

    def wanted(self, refs: Mapping[Ref, ObjectID], names: list[Ref]) -> list[ObjectID]:
        store = self.repo.object_store
        with local_store("Reading the repository"):
            return [refs[n] for n in names if n in refs and refs[n] not in store]

    def fetch_tip(self) -> str | None:
        """The branch's commit on the remote (fetched if new here), or None if absent."""
        ref = _ref(self.remote_ref)
        refs = self.remote().fetch(
            self.repo,
            lambda refs: self.wanted(refs, [ref]),
            ref_prefix=[ref],
            depth=1,
            filter_spec=SYNC_FETCH_FILTER,
        )
        tip = refs.get(ref)
        if tip is None:
            self.delete_ref(self.tracking_ref)
            return None
        self.update_ref(self.tracking_ref, tip.decode(), reason="windmill-git-sync: remote tip")
        return tip.decode()

    def _fetch_history(self) -> None:
        ref = _ref(self.remote_ref)
        log.info("fetching the history of %s to compare commits", self.branch)
        self.remote().fetch(
            self.repo,
            lambda refs: [refs[ref]] if ref in refs else [],
            ref_prefix=[ref],
            depth=_ALL_HISTORY,
            # Only ancestry is compared: commits and trees, no file content.
            filter_spec=b"blob:none",
        )

    def push(self, commit: str, expected: str | None) -> PushOutcome:
        """Make the remote branch ``commit`` if it still is ``expected`` (None: absent)."""
        if expected is not None and not self.is_ancestor(expected, commit):
            # Pushing it would replace the remote's history on hosts that allow that.
            raise GitError("Git push refused: the commit does not build on the remote tip")
        self._flush()
        repo = self.repo

        def generate(have: object, want: object, ofs_delta: bool = False, progress: object = None):  # type: ignore[no-untyped-def]
            return repo.generate_pack_data(set(have), set(want), ofs_delta=ofs_delta)  # type: ignore[call-overload]

        return self.remote().push(
            repo,
            _ref(self.remote_ref),
            _oid(commit),
            _oid(expected) if expected else None,
            generate=generate,
        )


def _oid(sha: str) -> ObjectID:
    return ObjectID(sha.encode("ascii"))


def _ref(name: str) -> Ref:
    return Ref(name.encode())


def is_corruption(exc: Exception) -> bool:
    """Did this failure come from a damaged local repository?"""
    return isinstance(exc, RepositoryCorrupt)
