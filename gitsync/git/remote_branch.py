"""The target's branch on its remote, as the service's repository fetches and pushes it.

What a sync asks of the remote: the branch's tip (one commit deep, no large
blobs), its whole history when an ancestry check runs into the edge of a
shallow fetch, and a compare-and-swap push. ``transport.Remote`` speaks the
protocol and is the one place the token becomes a credential; this module
decides what to fetch and push.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dulwich.objects import ObjectID
from dulwich.refs import Ref
from dulwich.repo import Repo

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.git.transport import PushOutcome, Remote
from gitsync.git.trees import local_store
from gitsync.secrets import Redactor, Secret

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
            return repo.generate_pack_data(set(have), set(want), ofs_delta=ofs_delta)  # type: ignore[call-overload]

        return self.remote().push(repo, self.ref, commit, expected, generate=generate)


def wanted(repo: Repo, refs: Mapping[Ref, ObjectID], names: list[Ref]) -> list[ObjectID]:
    """Of the advertised ``names``, the commits ``repo`` does not have yet."""
    store = repo.object_store
    with local_store("Reading the repository"):
        return [refs[n] for n in names if n in refs and refs[n] not in store]
