"""Which backup commits touched an item: to find the one to restore.

Read from the service's own copy of the target's repository (the one the
syncs push from), so no token is needed and the Git host is not contacted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import items
from .config import Settings
from .deadline import Deadline
from .errors import NotFound, RequestError
from .git import GitRepo
from .git_restore import log_touching
from .secrets import NO_SECRETS, Secret
from .sync import target_key
from .sync_request import canonical_remote_url, is_valid_branch

_ITEM_PATH = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_.@/-]{0,299}")


@dataclass(frozen=True)
class HistoryQuery:
    workspace: str
    remote_url: str
    branch: str
    path_prefix: str
    item_path: str

    @classmethod
    def parse(cls, args: dict[str, str]) -> HistoryQuery:
        problems = []
        missing = [k for k in ("workspace", "git_remote_url", "path") if not args.get(k)]
        if missing:
            raise RequestError("Missing required fields: " + ", ".join(missing))
        try:
            remote = canonical_remote_url(args["git_remote_url"])
        except ValueError as exc:
            problems.append(f"Invalid git_remote_url: {exc}")
            remote = ""
        branch = args.get("git_branch") or "main"
        if not is_valid_branch(branch):
            problems.append("Invalid git_branch: must be a plain branch name")
        prefix = (args.get("path_prefix") or "").strip("/")
        if prefix and (".." in prefix.split("/") or not _ITEM_PATH.fullmatch(prefix)):
            problems.append("Invalid path_prefix: must be a relative directory")
        path = args["path"]
        if not _ITEM_PATH.fullmatch(path) or ".." in path.split("/"):
            problems.append("Invalid path: must be an item path like f/team/my_flow")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,49}", args["workspace"]):
            problems.append("Invalid workspace: must be a Windmill workspace id")
        if problems:
            raise RequestError("; ".join(problems))
        return cls(args["workspace"], remote, branch, prefix, path)


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
