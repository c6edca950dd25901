"""Which backup commits touched an item: to find the one to restore.

Read from the service's own copy of the target's repository (the one the
syncs push from), so no token is needed and the Git host is not contacted.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import NotFound
from gitsync.git.reads import log_touching
from gitsync.git.repo import GitRepo
from gitsync.secrets import NO_SECRETS, Secret
from gitsync.sync.job import target_key
from gitsync.windmill import items


@dataclass(frozen=True)
class HistoryQuery:
    workspace: str
    remote_url: str
    branch: str
    path_prefix: str
    item_path: str


def item_history(
    settings: Settings, query: HistoryQuery, limit: int = 100
) -> list[dict[str, object]]:
    key = target_key(
        settings.windmill_base_url,
        query.workspace,
        query.remote_url,
        query.branch,
        query.path_prefix,
    )
    root = settings.repos_dir / key
    if not (root / "repo.git" / "HEAD").is_file():
        raise NotFound(
            "This service has not backed up that workspace to that repository and branch yet"
        )
    with GitRepo(
        settings=settings,
        git_dir=root / "repo.git",
        remote_url=query.remote_url,
        branch=query.branch,
        token=Secret(""),
        username="git",
        redactor=NO_SECRETS,
        deadline=Deadline(settings.command_timeout),
    ) as repo:
        ref = repo.local_ref if repo.rev_parse(repo.local_ref) else repo.tracking_ref
        if repo.rev_parse(ref) is None:
            return []
        log = log_touching(repo, ref, query.path_prefix)
    found: list[dict[str, object]] = []
    prefix = query.path_prefix
    for commit, date, author, subject, files in log:
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
    return found
