"""Which commit a sync builds on: the remote tip, or commits of ours it has not seen yet.

Commits of ours that the remote will never take (it moved on while they
waited: a push that failed, a crash, another replica) are kept under
``refs/wmsync/pending/``, but only while they hold something the remote does
not: a pending commit is dropped as soon as the remote has every file it
added or changed since its line left the remote's history (its "fork"),
byte for byte, or has the commit itself. Windmill is the source: a sync
pushes the workspace as it is, so a kept commit's files usually reach the
remote with the next push and the ref goes away with it. A lost push race is
not a divergence at all: the step that pushes goes back to its base
(steps.py), so only a real one leaves a ref here.
"""

from __future__ import annotations

import logging
import time

from gitsync.git.repo import EMPTY_TREE_HEX, GitRepo

log = logging.getLogger(__name__)

PENDING_PREFIX = "refs/wmsync/pending/"


def choose_base(repo: GitRepo, tip: str | None) -> str | None:
    """The commit to build on: the remote tip, or our unpushed commits on top of it."""
    local = repo.rev_parse(repo.local_ref)
    if local is None or local == tip:
        return tip
    if tip is None:
        # Commits made here that never reached the remote (the push failed
        # or the process died): push them rather than lose them.
        return local
    # From what is here first: the usual cases (the remote one commit ahead,
    # or our commit on the tip) need no fetch of the whole history.
    if repo.known_ancestor(local, tip):
        return tip
    if repo.known_ancestor(tip, local) or repo.is_ancestor(tip, local):
        return local
    if repo.is_ancestor(local, tip):
        return tip
    # Diverged: someone else's commits are on the remote and ours are not.
    # Keep ours under a pending ref, unless the remote already holds what
    # they hold, and build on theirs.
    if holds(repo, tip, local):
        log.info(
            "local commit %s diverged from the remote, which already holds its files; "
            "building on the remote",
            local[:12],
        )
    elif local not in repo.refs_under(PENDING_PREFIX).values():
        pending = f"{PENDING_PREFIX}{int(time.time())}-{local[:12]}"
        repo.update_ref(pending, local, reason="windmill-git-sync: kept diverged commit")
        log.warning("local commit %s diverged from the remote; kept as %s", local[:12], pending)
    # The pending ref (if any) holds it now: the branch follows the remote,
    # so the next sync does not find the same divergence again.
    repo.update_ref(repo.local_ref, tip, local, reason="windmill-git-sync: follow the remote")
    return tip


def drop_delivered(repo: GitRepo, remote_head: str) -> None:
    """Drop the pending commits whose content the remote (now at ``remote_head``) holds."""
    kept = repo.refs_under(PENDING_PREFIX)
    for name, commit in kept.items():
        if holds(repo, remote_head, commit):
            repo.delete_ref(name, commit)
            log.info("the remote now holds the files of %s; dropped %s", commit[:12], name)


def holds(repo: GitRepo, remote_head: str, commit: str) -> bool:
    """Does ``remote_head`` hold ``commit``: in its history, or every file it brought?

    What ``commit`` brought is the difference between its fork (the first
    commit on its first-parent line that is in the remote's history, as far
    as this copy knows it; none: the empty tree) and itself. Deletions bring
    nothing to keep. Intermediate versions on a line of several unpushed
    syncs count through the line's last one, as one push of that line would
    have made the remote's tree.
    """
    history = repo.known_history(remote_head)
    if commit in history:
        return True
    fork: str | None = commit
    while fork is not None and fork not in history:
        try:
            fork = repo.first_parent(fork)
        except KeyError:  # beyond a shallow fetch's edge
            fork = None
    fork_tree = repo.tree_of(fork) if fork is not None else EMPTY_TREE_HEX
    brought = [
        c.path for c in repo.diff_trees(fork_tree, repo.tree_of(commit)) if c.status != "deleted"
    ]
    if not brought:
        return True
    ours = repo.ls_tree(repo.tree_of(commit))
    theirs = repo.ls_tree(repo.tree_of(remote_head))
    return all(theirs.get(path) == ours[path] for path in brought)
