"""The commits of a sync: one per Windmill author, each saying who changed what and why."""

from __future__ import annotations

import dataclasses

from gitsync.backup.job import (
    MAX_LISTED_CHANGES,
    CommitInfo,
    SyncJob,
    in_prefix,
    join_prefix,
    strip_prefix,
)
from gitsync.config import Settings
from gitsync.git.repo import Change, GitRepo, Identity
from gitsync.version import CLI_VERSION
from gitsync.windmill import attribution, items
from gitsync.windmill.api import WindmillApi
from gitsync.windmill.items import ItemChange, ItemRef


def item_changes(changes: list[Change], prefix: str) -> list[ItemChange]:
    relative = [
        dataclasses.replace(c, path=strip_prefix(c.path, prefix))
        for c in changes
        if in_prefix(c.path, prefix)
    ]
    return items.group_changes(relative, {c.path: c.blob for c in relative})


def commit_by_author(
    settings: Settings,
    job: SyncJob,
    repo: GitRepo,
    base: str | None,
    base_tree: str,
    tree: str,
    changes: list[Change],
) -> list[CommitInfo]:
    """One commit per Windmill author (by name), unattributed items last.

    Each commit's tree is the previous one plus that author's items, so
    the chain ends exactly at ``tree``; files that belong to no item (the
    lock file, the README) travel with the last commit.
    """
    changed_items = item_changes(changes, job.path_prefix)
    existing = [c for c in changed_items if c.change != "deleted"]
    authors = (
        attribution.attribute(
            WindmillApi(
                settings.windmill_base_url,
                job.windmill_token,
                extra_ca=settings.node_extra_ca_certs,
            ),
            job.workspace,
            existing,
        )
        if existing
        else {}
    )
    groups: dict[Identity | None, list[ItemChange]] = {}
    for change in changed_items:
        found = authors.get(change.item)
        groups.setdefault(found.identity if found else None, []).append(change)
    named = [k for k in groups if k is not None]
    order: list[Identity | None] = [*sorted(named, key=lambda i: (i.name, i.email))]
    if None in groups or not order:
        # The request's identity: unattributed items, or only bookkeeping.
        order.append(None)
    # Only intermediate commits need trees built file by file.
    entries = repo.ls_tree(tree) if len(order) > 1 else {}
    commits: list[CommitInfo] = []
    parent, current = base, base_tree
    for index, who in enumerate(order):
        group = groups.get(who, [])
        last = index == len(order) - 1
        if not group and not last:
            continue
        if last:
            next_tree = tree
        else:
            paths = {join_prefix(job.path_prefix, f) for c in group for f in c.files}
            next_tree = repo.tree_with(current, {p: entries.get(p) for p in paths})
        if next_tree == current:
            continue
        text = commit_message(job, group, authors, settings.windmill_host)
        author = who or job.author
        commit = repo.commit_tree(next_tree, parent, text, author, job.author)
        commits.append(CommitInfo(commit, author, text.splitlines()[0], len(group)))
        parent, current = commit, next_tree
    return commits


def commit_message(
    job: SyncJob,
    changes: list[ItemChange],
    authors: dict[ItemRef, attribution.Attribution],
    windmill_host: str,
) -> str:
    """Each item with who changed it and why, as Windmill recorded it.

    The commit's author names at most one of them; the request identity's
    commit gathers items of several users (or of users the workspace no
    longer lists), so the user is said next to each item and once per user
    in a ``Windmill-User`` trailer.
    """
    lines = [items.subject(job.workspace, changes), ""]
    for change in changes[:MAX_LISTED_CHANGES]:
        found = authors.get(change.item)
        by = f" by {one_line(found.username)}" if found else ""
        lines.append(f"- {change.describe()}{by}")
        if found and found.message:
            # Indented, so a message's own lines can never pose as trailers.
            first, *more = [line for line in found.message.splitlines() if line.strip()] or [""]
            lines.append(f"  Deployment message: {first}")
            lines += [f"    {line}" for line in more]
    if len(changes) > MAX_LISTED_CHANGES:
        lines.append(f"- … and {len(changes) - MAX_LISTED_CHANGES} more")
    if not changes:
        lines.append("Only the backup's bookkeeping files (wmill-lock.yaml, README.md) changed.")
    lines += [
        "",
        f"Windmill-Workspace: {job.workspace}",
        f"Windmill-Host: {windmill_host}",
        f"Windmill-CLI-Version: {CLI_VERSION}",
    ]
    users = sorted({one_line(authors[c.item].username) for c in changes if c.item in authors})
    lines += [f"Windmill-User: {user}" for user in users]
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    return " ".join(text.split())
