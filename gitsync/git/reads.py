"""The read side of a backup: every reference fetched for ``/restore``, and history.

A restore fetches the remote whole (all branches and tags, all history; the
fetch bounded like any other) into its own repository, resolves the reference
it was given and writes that tree out through ``walk.export``'s checks.
``GET /history`` reads the sync's own copy and never touches the network;
``POST /history`` first deepens that copy (``fetch_history``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dulwich.refs import Ref

from gitsync.git import walk
from gitsync.git.remote_branch import wanted
from gitsync.git.repo import GitRepo
from gitsync.git.trees import local_store

_PREFIXES = (Ref(b"refs/heads/"), Ref(b"refs/tags/"))
_REMOTES = b"refs/remotes/origin/"


def fetch_everything(git: GitRepo) -> None:
    """Every branch (as refs/remotes/origin/*, pruned) and tag of the remote."""
    refs = git.remote_branch.remote().fetch(
        git.repo,
        lambda refs: wanted(git.repo, refs, [n for n in refs if not n.endswith(b"^{}")]),
        ref_prefix=list(_PREFIXES),
        depth=None,
        filter_spec=None,
    )
    with local_store("Updating refs"):
        current = git.repo.refs.as_dict()
        advertised = {
            Ref(name.replace(b"refs/heads/", _REMOTES, 1)): sha
            for name, sha in refs.items()
            if name.startswith(_PREFIXES) and not name.endswith(b"^{}")
        }
        for name in current:
            if name.startswith(_REMOTES) and name not in advertised:
                git.delete_ref(name.decode())
        for name, sha in advertised.items():
            if current.get(name) != sha and sha in git.repo.object_store:
                git.update_ref(name.decode(), sha.decode(), reason="windmill-git-sync: fetch")


def resolve(git: GitRepo, ref: str) -> str | None:
    """A fetched branch, a tag, or a commit id (full or abbreviated) to a commit id."""
    with local_store("Reading the repository"):
        refs = git.repo.refs.as_dict()
        for name in (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}"):
            sha = refs.get(Ref(name.encode()))
            if sha is not None:
                try:
                    return git.peel(sha).id.decode()
                except KeyError:
                    return None
        return walk.commit_by_prefix(git.repo.object_store, ref)


def export_tree(git: GitRepo, commit: str, prefix: str, dest: Path) -> None:
    """Write the files of ``commit:prefix`` into ``dest``; only validated paths."""
    with local_store("Reading a tree"):
        tree = git.peel(walk.object_id(commit)).tree
        walk.export(git.get, tree, prefix, dest)


def fetch_history(git: GitRepo) -> None:
    """The branch's whole history into the sync's copy: commits and trees, no file content.

    The tip first, the way a sync fetches it (small files included), so the
    copy stays what the next sync expects; then everything behind it. Only
    the tracking ref moves, as every sync's own fetch moves it: the local
    branch, and with it the base of the next push, stays where it is.
    """
    tip = git.fetch_tip()
    with local_store("Reading the repository"):
        if tip is None or not git.repo.get_shallow():
            return  # no branch, or all its history is here already
    git.remote_branch.fetch_history(git.repo)


def log_touching(
    git: GitRepo, ref: str, prefix: str
) -> Iterator[tuple[str, str, str, str, list[str] | None]]:
    """(commit, date, author, subject, files) per commit under ``prefix``, newest first.

    ``files`` is None for a commit at the edge of a shallow copy (see ``walk.log``).
    """
    sha = git.rev_parse(ref)
    if sha is None:
        return
    with local_store("Reading the history"):
        head = walk.object_id(sha)
        yield from walk.log(git.get, head, prefix, git.repo.get_shallow())
