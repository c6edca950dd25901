"""Which commit a sync builds on: the remote tip, or commits of ours it has not seen yet."""

from __future__ import annotations

import logging
import time

from gitsync.git.repo import GitRepo

log = logging.getLogger(__name__)


def choose_base(repo: GitRepo, tip: str | None) -> str | None:
    """The commit to build on: the remote tip, or our unpushed commits on top of it."""
    local = repo.rev_parse(repo.local_ref)
    if local is None or local == tip:
        return tip
    if tip is None or repo.is_ancestor(tip, local):
        # Commits made here that never reached the remote (the push failed
        # or the process died): push them rather than lose them.
        return local
    if repo.is_ancestor(local, tip):
        return tip
    # Diverged: someone else's commits are on the remote and ours are
    # not. Keep ours under a pending ref and build on theirs.
    pending = f"refs/wmsync/pending/{int(time.time())}-{local[:12]}"
    repo.update_ref(pending, local, reason="windmill-git-sync: kept diverged commit")
    log.warning("local commit %s diverged from the remote; kept as %s", local[:12], pending)
    return tip
