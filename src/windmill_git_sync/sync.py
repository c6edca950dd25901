"""The sync: pull a workspace with wmill, commit what changed, push it.

This module knows nothing of HTTP. It orchestrates the small modules that do
the work (``wmill``, ``mirror``, ``git``) under a per-target lock and a
deadline, following the sequence in the shared security notes (c.4, g):
the commit's parent is always the remote tip, the push is a fast-forward of
``refs/heads/<branch>``, and a rejected push is rebuilt on the new tip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from . import mirror
from .config import Settings
from .credentials import default_username
from .deadline import Deadline
from .errors import GitError, SyncTimeout
from .git import Change, GitRepo, Identity
from .locks import TargetLocks
from .secrets import Redactor, Secret
from .wmill import CLI_VERSION, Scope, WmillCli

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
# Changed paths listed in a commit body and a response; counts are always whole.
MAX_LISTED_CHANGES = 500


@dataclass(frozen=True)
class SyncJob:
    """Everything one sync needs; built from a validated request."""

    workspace: str
    remote_url: str  # canonical https URL, no credentials
    branch: str
    windmill_token: Secret
    git_token: Secret
    author: Identity
    git_username: str | None = None
    scope: Scope = field(default_factory=Scope)

    @property
    def username(self) -> str:
        return self.git_username or default_username(self.remote_url)

    def redactor(self) -> Redactor:
        return Redactor([self.windmill_token, self.git_token], [self.username])


@dataclass(frozen=True)
class SyncResult:
    workspace: str
    remote_url: str
    branch: str
    changed: bool
    commit: str | None
    changes: tuple[Change, ...]
    duration_seconds: float
    push_attempts: int = 0

    def count(self, status: str) -> int:
        return sum(1 for c in self.changes if c.status == status)

    def to_dict(self) -> dict[str, object]:
        return {
            "workspace": self.workspace,
            "remote": self.remote_url,
            "branch": self.branch,
            "changed": self.changed,
            "commit": self.commit,
            "added": self.count("added"),
            "modified": self.count("modified"),
            "deleted": self.count("deleted"),
            "files": [
                {"path": c.path, "status": c.status} for c in self.changes[:MAX_LISTED_CHANGES]
            ],
            "files_truncated": len(self.changes) > MAX_LISTED_CHANGES,
            "duration_seconds": round(self.duration_seconds, 3),
        }


def target_key(windmill_base_url: str, workspace: str, remote_url: str, branch: str) -> str:
    material = "\n".join((windmill_base_url, workspace, remote_url, branch))
    return hashlib.sha256(material.encode()).hexdigest()[:24]


class SyncService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wmill = WmillCli(settings)
        self.locks = TargetLocks(settings.data_dir / "locks")
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_syncs)

    def prepare_data_dir(self) -> None:
        for path in (self.settings.data_dir, self.settings.repos_dir, self.settings.tmp_dir):
            path.mkdir(parents=True, exist_ok=True)

    def sync(self, job: SyncJob) -> SyncResult:
        started = time.monotonic()
        deadline = Deadline(self.settings.sync_timeout)
        key = target_key(self.settings.windmill_base_url, job.workspace, job.remote_url, job.branch)
        if not self._slots.acquire(timeout=max(deadline.remaining(), 0.001)):
            raise SyncTimeout("waiting for a free sync slot", deadline.seconds)
        try:
            with self.locks.hold(key, deadline):
                result = self._sync_locked(job, key, deadline)
        finally:
            self._slots.release()
        return SyncResult(**{**result.__dict__, "duration_seconds": time.monotonic() - started})

    def _sync_locked(self, job: SyncJob, key: str, deadline: Deadline) -> SyncResult:
        root = self.settings.repos_dir / key
        root.mkdir(parents=True, exist_ok=True)
        _write_target_description(root, job)
        redactor = job.redactor()

        # 1. Pull first, with this request's own token: nothing is pushed
        #    unless this request proved it may read the workspace.
        export_dir = root / "export"
        self.wmill.pull(
            workspace=job.workspace,
            token=job.windmill_token,
            export_dir=export_dir,
            scope=job.scope,
            deadline=deadline,
            redactor=redactor,
        )
        export = mirror.scan_export(export_dir)

        repo = GitRepo(
            settings=self.settings,
            git_dir=root / "repo.git",
            work_tree=root / "worktree",
            home=root / "home",
            remote_url=job.remote_url,
            branch=job.branch,
            token=job.git_token,
            username=job.username,
            redactor=redactor,
            deadline=deadline,
        )
        repo.ensure_initialized()
        with repo.credentials():
            for attempt in range(1, PUSH_ATTEMPTS + 1):
                tip = self._fetch_tip(repo)
                base = self._choose_base(repo, tip)
                repo.checkout_tree(base)
                mirror.mirror(export, repo.work_tree)
                tree = repo.stage_all()
                changes = repo.diff_trees(repo.tree_of(tip), tree)
                if base is not None and tree == repo.tree_of(base):
                    if base == tip:
                        return SyncResult(
                            job.workspace,
                            job.remote_url,
                            job.branch,
                            False,
                            tip,
                            (),
                            0.0,
                            attempt - 1,
                        )
                    commit = base  # earlier commits that never reached the remote
                else:
                    message = commit_message(
                        job, repo.diff_trees(repo.tree_of(base), tree), self.settings.windmill_host
                    )
                    commit = repo.commit_tree(tree, base, message, job.author, job.author)
                    repo.update_ref(repo.local_ref, commit, reason="windmill-git-sync: commit")
                outcome = repo.push(commit)
                if outcome.ok:
                    repo.update_ref(repo.tracking_ref, commit, reason="windmill-git-sync: pushed")
                    return SyncResult(
                        job.workspace,
                        job.remote_url,
                        job.branch,
                        bool(changes),
                        commit,
                        tuple(changes),
                        0.0,
                        attempt,
                    )
                log.info(
                    "push of %s rejected (remote moved on), retrying (%d/%d)",
                    job.workspace,
                    attempt,
                    PUSH_ATTEMPTS,
                )
                time.sleep(min(0.2 * 2**attempt, max(deadline.remaining(), 0)))
        raise GitError(
            f"Git push failed: the branch '{job.branch}' kept moving on the remote "
            f"({PUSH_ATTEMPTS} attempts); try again"
        )

    def _fetch_tip(self, repo: GitRepo) -> str | None:
        tip = repo.remote_tip()
        if tip is None:
            repo.delete_ref(repo.tracking_ref)
            return None
        if not repo.has_commit(tip):
            repo.fetch()
        repo.update_ref(repo.tracking_ref, tip, reason="windmill-git-sync: remote tip")
        return tip

    def _choose_base(self, repo: GitRepo, tip: str | None) -> str | None:
        """The commit to build on: the remote tip, or our unpushed commits on top of it."""
        local = repo.rev_parse(repo.local_ref)
        if local is None or local == tip:
            return tip
        if tip is None or repo.is_ancestor(tip, local):
            # Commits made here that never reached the remote (e.g. the push
            # failed or the process died): push them rather than lose them.
            return local
        if repo.is_ancestor(local, tip):
            return tip
        # Diverged: someone else's commits are on the remote and ours are
        # not. Keep ours under a pending ref and build on theirs.
        pending = f"refs/wmsync/pending/{int(time.time())}-{local[:12]}"
        repo.update_ref(pending, local, reason="windmill-git-sync: kept diverged commit")
        log.warning("local commit %s diverged from the remote; kept as %s", local[:12], pending)
        return tip


def commit_message(job: SyncJob, changes: list[Change], windmill_host: str) -> str:
    counts = {s: sum(1 for c in changes if c.status == s) for s in ("added", "modified", "deleted")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no file changes"
    lines = [f"{job.workspace}: backup ({summary})", ""]
    for change in changes[:MAX_LISTED_CHANGES]:
        lines.append(f"- {change.status}: {change.path}")
    if len(changes) > MAX_LISTED_CHANGES:
        lines.append(f"- … and {len(changes) - MAX_LISTED_CHANGES} more")
    lines += [
        "",
        f"Windmill-Workspace: {job.workspace}",
        f"Windmill-Host: {windmill_host}",
        f"Windmill-CLI-Version: {CLI_VERSION}",
    ]
    return "\n".join(lines) + "\n"


def _write_target_description(root: Path, job: SyncJob) -> None:
    # Lets an operator tell which directory is which; no secrets.
    parts = urllib.parse.urlsplit(job.remote_url)
    description = {
        "workspace": job.workspace,
        "remote": f"{parts.netloc}{parts.path}",
        "branch": job.branch,
    }
    path = root / "target.json"
    text = json.dumps(description, indent=2) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
