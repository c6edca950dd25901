"""Which backup commits touched an item: to find the one to restore.

Read from the service's own copy of the target's repository (the one the
syncs push from). Without a token the Git host is not contacted, and the
answer says whether that copy reaches back far enough to be complete: a
sync fetches only the branch's tip, so history older than the service's
first sync is not here. With a token, the branch's history (commits and
trees, no file content) is fetched into the copy first, under the target's
lock, and kept for later reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import NotFound
from gitsync.git.reads import fetch_history, log_touching
from gitsync.git.repo import GitRepo
from gitsync.secrets import Redactor, Secret
from gitsync.targets import TargetLocks, target_key
from gitsync.windmill import items

INCOMPLETE_HINT = (
    "The service's copy of the repository starts where its first backup found the "
    "branch; older commits may exist on the Git host. POST /history with git_token "
    "(the history command: with GIT_TOKEN) fetches them, commits and trees only."
)


@dataclass(frozen=True)
class HistoryQuery:
    workspace: str
    remote_url: str
    branch: str
    path_prefix: str
    item_path: str
    # Given: fetch the branch's history from the Git host first.
    git_token: Secret | None = field(default=None, compare=False)
    git_username: str = "git"

    def key(self, settings: Settings) -> str:
        """The target's key: the same lock and copy as its syncs."""
        return target_key(
            settings.windmill_base_url,
            self.workspace,
            self.remote_url,
            self.branch,
            self.path_prefix,
        )


@dataclass(frozen=True)
class ItemHistory:
    commits: list[dict[str, object]]
    # False: the walk reached the edge of the copy before the limit.
    complete: bool

    def to_dict(self) -> dict[str, object]:
        found: dict[str, object] = {"commits": self.commits, "complete": self.complete}
        if not self.complete:
            found["hint"] = INCOMPLETE_HINT
        return found


def item_history(
    settings: Settings, query: HistoryQuery, locks: TargetLocks, limit: int = 100
) -> ItemHistory:
    """The item's commits; with a token, fetch the branch's history first, under ``locks``."""
    key = query.key(settings)
    git_dir = settings.repos_dir / key / "repo.git"
    if not (git_dir / "HEAD").is_file():
        raise NotFound(
            "This service has not backed up that workspace to that repository and branch yet"
        )
    if query.git_token is None:
        with _open(settings, query, git_dir, Deadline(settings.command_timeout)) as repo:
            return _read(repo, query, limit)
    deadline = Deadline(settings.command_timeout, what="the history fetch")
    # The syncs' own lock: no fetch while a sync of this target builds or pushes.
    with (
        locks.hold(key, deadline),
        _open(settings, query, git_dir, deadline) as repo,
    ):
        fetch_history(repo)
        return _read(repo, query, limit)


def _open(settings: Settings, query: HistoryQuery, git_dir: Path, deadline: Deadline) -> GitRepo:
    token = query.git_token or Secret("")
    return GitRepo(
        settings=settings,
        git_dir=git_dir,
        remote_url=query.remote_url,
        branch=query.branch,
        token=token,
        username=query.git_username,
        redactor=Redactor([token], [query.git_username]),
        deadline=deadline,
    )


def _read(repo: GitRepo, query: HistoryQuery, limit: int) -> ItemHistory:
    ref = repo.local_ref if repo.rev_parse(repo.local_ref) else repo.tracking_ref
    found: list[dict[str, object]] = []
    complete = True
    prefix = query.path_prefix
    for commit, date, author, subject, files in log_touching(repo, ref, prefix):
        if files is None:
            # The copy ends here: what this commit changed, and all before it, is unknown.
            complete = False
            continue
        touched = [
            f
            for f in files
            if (ref_ := items.item_of(f[len(prefix) + 1 :] if prefix else f))
            and ref_.path == query.item_path
        ]
        if touched:
            found.append(
                {
                    "commit": commit,
                    "date": date,
                    "author": author,
                    "subject": subject,
                    "files": touched,
                }
            )
            if len(found) >= limit:
                break
    return ItemHistory(found, complete)
