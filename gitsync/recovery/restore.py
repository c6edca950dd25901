"""The way back: a Git reference into a Windmill workspace, safely.

The backup at a branch, tag or commit (and path prefix) is checked out into
a scratch directory the service owns, given the service's own wmill.yaml
(never the repository's), and pushed with the pinned CLI's ``wmill sync
push``, with the same secret hygiene as the sync. Without ``apply`` it is
a dry run: the CLI computes the changes and nothing is written. Deletions in
the target workspace need ``allow_deletions``; the mass-deletion share
applies to them too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import MassDeletionRefused, RequestError, RestoreStopped, SyncError
from gitsync.git.reads import export_tree, fetch_everything, resolve
from gitsync.git.repo import GitRepo
from gitsync.git.walk import MissingPrefix
from gitsync.secrets import Redactor, Secret
from gitsync.targets import TargetLocks, target_key
from gitsync.windmill import items, mirror
from gitsync.windmill.wmill import Scope, WmillCli

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreJob:
    workspace: str
    remote_url: str
    git_ref: str
    windmill_token: Secret
    git_token: Secret
    git_username: str
    path_prefix: str = ""
    includes: tuple[str, ...] = ("f/**", "u/**")
    include_secrets: str = "skip"
    apply: bool = False
    allow_deletions: bool = False
    allow_mass_deletion: bool = False
    # The branch the workspace is backed up to: with the prefix, it names the
    # target whose syncs a restore must not overlap.
    branch: str = "main"

    def key(self, settings: Settings) -> str:
        """The target's key: the same lane and lock as its syncs."""
        return target_key(
            settings.windmill_base_url,
            self.workspace,
            self.remote_url,
            self.branch,
            self.path_prefix,
        )

    def redactor(self) -> Redactor:
        return Redactor([self.windmill_token, self.git_token], [self.git_username])


@dataclass(frozen=True)
class RestoreResult:
    workspace: str
    git_ref: str
    commit: str
    applied: bool
    changes: list[dict[str, str]]
    skipped_deletions: list[dict[str, str]] = field(default_factory=list)
    # Items the last sync to this branch held back for possible secrets: the
    # backup has them at an older version, or not at all.
    held: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "workspace": self.workspace,
            "git_ref": self.git_ref,
            "commit": self.commit,
            "dry_run": not self.applied,
            "applied": self.applied,
            "changes": self.changes,
            "items": _items(self.changes),
            "skipped_deletions": self.skipped_deletions,
            "held_items": self.held,
            **({"held_note": held_note(self.held)} if self.held else {}),
            "counts": {
                kind: sum(1 for c in self.changes if c["type"] == kind)
                for kind in ("added", "edited", "deleted")
            },
        }


def held_note(held: list[dict[str, Any]]) -> str:
    names = "; ".join(f"{h.get('item')} ({h.get('backed_up')})" for h in held)
    return (
        f"The backup lacks the current version of {len(held)} item(s): its last sync held "
        f"them back for possible secrets, so it has an older version or none: {names}"
    )


# Given the remote, the branch and the path prefix: what their last sync held back.
HeldLookup = Callable[[str, str, str], list[dict[str, Any]]]


class RestoreService:
    def __init__(
        self, settings: Settings, locks: TargetLocks, held_lookup: HeldLookup | None = None
    ) -> None:
        self.settings = settings
        self.held_lookup = held_lookup
        self.wmill = WmillCli(settings)
        # The service's own locks: a sync of the target waits for the restore.
        self.locks = locks

    def restore(self, job: RestoreJob) -> RestoreResult:
        deadline = Deadline(self.settings.sync_timeout, what="the restore")
        key = job.key(self.settings)
        # A scratch copy per target: restores of other targets never share it unlocked.
        root = self.settings.data_dir / "restore" / key
        with self.locks.hold(key, deadline):
            root.mkdir(parents=True, exist_ok=True)
            with GitRepo(
                settings=self.settings,
                git_dir=root / "repo.git",
                remote_url=job.remote_url,
                branch="main",
                token=job.git_token,
                username=job.git_username,
                redactor=job.redactor(),
                deadline=deadline,
            ) as repo:
                result = self._restore_from(job, repo, deadline)
        # Only the branch's tip is what the last sync left: an older ref says nothing of it.
        if self.held_lookup is None or job.git_ref.removeprefix("refs/heads/") != job.branch:
            return result
        held = self.held_lookup(job.remote_url, job.branch, job.path_prefix)
        return dataclasses.replace(result, held=held)

    def _restore_from(self, job: RestoreJob, repo: GitRepo, deadline: Deadline) -> RestoreResult:
        repo.ensure_initialized()
        fetch_everything(repo)
        commit = resolve(repo, job.git_ref)
        if commit is None:
            raise RequestError(
                f"git_ref '{job.git_ref}' is not a branch, tag or commit of the repository"
            )
        self.settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="wgs-restore-", dir=self.settings.tmp_dir) as tmp:
            tree = Path(tmp) / "tree"
            tree.mkdir()
            try:
                export_tree(repo, commit, job.path_prefix, tree)
            except MissingPrefix:
                raise RequestError(
                    f"path_prefix '{job.path_prefix}' does not exist at '{job.git_ref}'"
                ) from None
            _keep_only_windmill_files(tree)
            scope = Scope(includes=job.includes, secrets=job.include_secrets)
            (tree / "wmill.yaml").write_text(scope.wmill_yaml())
            return self._push(job, commit, tree, deadline)

    def _push(self, job: RestoreJob, commit: str, tree: Path, deadline: Deadline) -> RestoreResult:
        def push(dry_run: bool, keep_deleted: bool) -> list[dict[str, str]]:
            return self.wmill.push(
                workspace=job.workspace,
                token=job.windmill_token,
                directory=tree,
                dry_run=dry_run,
                keep_deleted=keep_deleted,
                deadline=deadline,
                redactor=job.redactor(),
            )

        plan = push(dry_run=True, keep_deleted=False)
        deletions = [c for c in plan if c["type"] == "deleted"]
        if deletions and job.allow_deletions and not job.allow_mass_deletion:
            local = sum(1 for _ in _files(tree))
            added = sum(1 for c in plan if c["type"] == "added")
            in_target = max(local - added + len(deletions), 1)
            share = len(deletions) / in_target
            if share > self.settings.mass_deletion_share:
                raise MassDeletionRefused(
                    f"Refusing to restore: it would delete {len(deletions)} of the {in_target} "
                    f"files of workspace '{job.workspace}' ({share:.0%}; the limit is "
                    f"{self.settings.mass_deletion_share:.0%}). Repeat with "
                    '"allow_mass_deletion": true if that is what you want.'
                )
        skipped = [] if job.allow_deletions else deletions
        planned = [c for c in plan if c not in skipped]
        if not job.apply:
            return RestoreResult(job.workspace, job.git_ref, commit, False, planned, skipped)
        try:
            push(dry_run=False, keep_deleted=not job.allow_deletions)
        except SyncError as exc:
            # The CLI stops at the first failed write; earlier writes stay.
            try:
                remaining = push(dry_run=True, keep_deleted=not job.allow_deletions)
            except SyncError:
                remaining = planned
            done = [c for c in planned if c not in remaining]
            raise RestoreStopped(
                f"Restore stopped part-way: {len(done)} of {len(planned)} changes were applied "
                f"to workspace '{job.workspace}' before it failed ({exc.message})",
                applied=done,
                not_applied=remaining,
                items_applied=_items(done),
                detail=exc.detail,
            ) from None
        log.info(
            "restored %s at %s into workspace %s (%d changes)",
            job.remote_url,
            job.git_ref,
            job.workspace,
            len(planned),
        )
        return RestoreResult(job.workspace, job.git_ref, commit, True, planned, skipped)


def _files(root: Path) -> list[str]:
    return [str(Path(d, f).relative_to(root)) for d, _, fs in os.walk(root) for f in fs]


def _keep_only_windmill_files(root: Path) -> None:
    """Drop what the backup holds besides Windmill's files (a README, CI config...)."""
    for rel in _files(root):
        if not mirror.is_managed(rel) or rel == "wmill.yaml":
            (root / rel).unlink()
    for dirpath, _, _ in os.walk(root, topdown=False):
        if dirpath != str(root) and not os.listdir(dirpath):
            os.rmdir(dirpath)
    if (root / ".git").exists():  # a tree cannot hold one, but never push one
        shutil.rmtree(root / ".git")


def _items(changes: list[dict[str, str]]) -> list[dict[str, str]]:
    grouped: dict[items.ItemRef, set[str]] = {}
    for change in changes:
        ref = items.item_of(change["path"])
        if ref is not None:
            grouped.setdefault(ref, set()).add(change["type"])
    return [
        {
            "kind": ref.kind,
            "path": ref.path,
            "change": "created"
            if types == {"added"}
            else "deleted"
            if types == {"deleted"}
            else "updated",
        }
        for ref, types in sorted(grouped.items())
    ]
