"""The target's branch on its remote, as the service's repository fetches and pushes it.

What a sync asks of the remote: the branch's tip (one commit deep, no large
blobs), its whole history when an ancestry check runs into the edge of a
shallow fetch, and a compare-and-swap push. ``transport.Remote`` speaks the
protocol and is the one place the token becomes a credential; this module
decides what to fetch and push.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from dulwich.object_store import BaseObjectStore
from dulwich.objects import S_ISGITLINK, Commit, ObjectID, Tree
from dulwich.pack import generate_unpacked_objects
from dulwich.refs import Ref
from dulwich.repo import Repo

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.git.transport import PushOutcome, Remote
from gitsync.git.trees import local_store
from gitsync.secrets import Redactor, Secret

log = logging.getLogger(__name__)

# Blobs above this size are not fetched for a sync: it only needs the remote's
# trees (and our README's text), and a "zip bomb" blob never arrives.
SYNC_FETCH_FILTER = b"blob:limit=1048576"
# Far deeper than any backup's history: git's own value for --unshallow.
_ALL_HISTORY = 0x7FFFFFFF


@dataclass
class RemoteBranch:
    """One branch of one remote: how to reach it, and what the sync fetches of it."""

    settings: Settings
    url: str
    branch: str
    token: Secret
    username: str
    redactor: Redactor
    deadline: Deadline
    _remote: Remote | None = field(default=None, init=False, repr=False)

    @property
    def ref(self) -> Ref:
        return Ref(f"refs/heads/{self.branch}".encode())

    def remote(self) -> Remote:
        """The whole remote (a restore fetches every branch), built on first use."""
        if self._remote is None:
            self._remote = Remote(
                url=self.url,
                username=self.username,
                token=self.token,
                ca_file=self.settings.git_ssl_cainfo,
                deadline=self.deadline,
                redactor=self.redactor,
                max_fetch_bytes=self.settings.max_fetch_bytes,
            )
        return self._remote

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def fetch_tip(self, repo: Repo) -> ObjectID | None:
        """The branch's commit on the remote, fetched into ``repo`` if new; None if absent."""
        ref = self.ref
        refs = self.remote().fetch(
            repo,
            lambda refs: wanted(repo, refs, [ref]),
            ref_prefix=[ref],
            depth=1,
            filter_spec=SYNC_FETCH_FILTER,
        )
        return refs.get(ref)

    def fetch_history(self, repo: Repo) -> None:
        """All of the branch's history behind what ``repo`` has: commits and trees only."""
        ref = self.ref
        self.remote().fetch(
            repo,
            lambda refs: [refs[ref]] if ref in refs else [],
            ref_prefix=[ref],
            depth=_ALL_HISTORY,
            # For ancestry and /history: commits and trees, no file content.
            filter_spec=b"blob:none",
        )

    def push(self, repo: Repo, commit: ObjectID, expected: ObjectID | None) -> PushOutcome:
        """Make the branch ``commit`` if it still is ``expected`` (None: absent)."""

        def generate(have: object, want: object, ofs_delta: bool = False, progress: object = None):  # type: ignore[no-untyped-def]
            store = repo.object_store
            if expected is not None and expected in set(have) and set(want) == {commit}:  # type: ignore[call-overload]
                with local_store("Preparing the push"):
                    objects = objects_since(store, commit, expected)
                if objects is not None:
                    log.debug("pushing the %d objects changed since the remote's tip", len(objects))
                    hinted = [(oid, None) for oid in objects]
                    return len(hinted), generate_unpacked_objects(
                        store, hinted, ofs_delta=ofs_delta
                    )
            return repo.generate_pack_data(set(have), set(want), ofs_delta=ofs_delta)  # type: ignore[call-overload]

        return self.remote().push(repo, self.ref, commit, expected, generate=generate)


# Commits of ours between the remote's tip and what we push: one per author.
_MAX_OWN_COMMITS = 64


def objects_since(
    store: BaseObjectStore, commit: ObjectID, base: ObjectID
) -> list[ObjectID] | None:
    """What the remote can lack when it holds ``base``: what each commit since changed.

    The commits from ``commit`` back to ``base`` (a line of our own, one per
    author), and in each one's tree what is not at the same path in its
    parent's tree. Whatever the parent has, the remote has: ``base`` is its
    tip, and the commits after it go in the same pack. dulwich's own object
    walk lists every object of the remote's tip instead (100 ms at 5000
    items); this reads the few trees that changed. None when the history is
    not such a line: the caller walks, as before. Were anything missed, the
    remote's receive-pack would refuse the push for a missing object; it
    could not be stored broken.
    """
    found: dict[ObjectID, None] = {}
    current = commit
    try:
        for _ in range(_MAX_OWN_COMMITS):
            made = store[current]
            if not isinstance(made, Commit) or len(made.parents) != 1:
                return None
            parent = store[made.parents[0]]
            if not isinstance(parent, Commit):
                return None
            found[current] = None
            _changed_objects(store, made.tree, parent.tree, found)
            if made.parents[0] == base:
                return list(found)
            current = made.parents[0]
    except KeyError:
        return None  # an object this copy lacks (a shallow edge): walk as before
    return None


def _changed_objects(
    store: BaseObjectStore, new: ObjectID, old: ObjectID | None, found: dict[ObjectID, None]
) -> None:
    """The objects under tree ``new`` that are not at the same path under tree ``old``."""
    if new == old:
        return
    tree, before = store[new], store[old] if old is not None else None
    if not isinstance(tree, Tree) or (before is not None and not isinstance(before, Tree)):
        raise KeyError(new)  # not a tree where one should be: walk as before
    found[new] = None
    previous = {e.path: e for e in before.iteritems()} if before is not None else {}
    for entry in tree.iteritems():
        prior = previous.get(entry.path)
        if prior is not None and prior.sha == entry.sha and prior.mode == entry.mode:
            continue
        if stat.S_ISDIR(entry.mode):
            subtree = prior.sha if prior is not None and stat.S_ISDIR(prior.mode) else None
            _changed_objects(store, entry.sha, subtree, found)
        elif not S_ISGITLINK(entry.mode):  # a submodule's commit is not ours to send
            found[entry.sha] = None


def wanted(repo: Repo, refs: Mapping[Ref, ObjectID], names: list[Ref]) -> list[ObjectID]:
    """Of the advertised ``names``, the commits ``repo`` does not have yet."""
    store = repo.object_store
    with local_store("Reading the repository"):
        return [refs[n] for n in names if n in refs and refs[n] not in store]
