"""The sync: pull a workspace with wmill, commit what changed, push it.

This module knows nothing of HTTP. It orchestrates the small modules that do
the work (``wmill``, ``mirror``, ``git``) under a per-target lock and a
deadline, following the sequence in the shared security notes (c.4, g):
the commit's parent is always the remote tip, the push is a fast-forward of
``refs/heads/<branch>``, a rejected push is rebuilt on the new tip, and a
commit that never reached the remote is pushed by the next sync.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import random
import shutil
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import mirror
from .config import Settings
from .credentials import default_username
from .deadline import Deadline
from .errors import GitError, InsufficientStorage, MassDeletionRefused
from .git import Change, GitRepo, Identity
from .locks import TargetLocks
from .process import end_orphan
from .retry import with_retries
from .secrets import Redactor, Secret
from .wmill import CLI_VERSION, Scope, WmillCli

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
# Changed paths listed in a commit body and a response; counts are always whole.
MAX_LISTED_CHANGES = 500
# Files regenerated on every pull: never counted as backed-up content.
_GENERATED = frozenset({"wmill.yaml", "wmill-lock.yaml"})

Progress = Callable[[str], None]


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
    allow_mass_deletion: bool = False

    @property
    def username(self) -> str:
        return self.git_username or default_username(self.remote_url)

    def redactor(self) -> Redactor:
        return Redactor([self.windmill_token, self.git_token], [self.username])

    def fingerprint(self) -> str:
        """Identifies requests that may share one run (same target, same inputs)."""
        material = json.dumps(
            [
                self.workspace,
                self.remote_url,
                self.branch,
                self.windmill_token.reveal(),
                self.git_token.reveal(),
                dataclasses.astuple(self.author),
                self.git_username,
                dataclasses.astuple(self.scope),
                self.allow_mass_deletion,
            ],
        )
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class SyncResult:
    workspace: str
    remote_url: str
    branch: str
    changed: bool
    commit: str | None
    changes: tuple[Change, ...]
    duration_seconds: float = 0.0
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

    def prepare_data_dir(self) -> None:
        for path in (self.settings.data_dir, self.settings.repos_dir, self.settings.tmp_dir):
            path.mkdir(parents=True, exist_ok=True)

    def key_for(self, job: SyncJob) -> str:
        return target_key(
            self.settings.windmill_base_url, job.workspace, job.remote_url, job.branch
        )

    def sync(self, job: SyncJob, progress: Progress | None = None) -> SyncResult:
        started = time.monotonic()
        deadline = Deadline(self.settings.sync_timeout)
        report = progress or (lambda phase: None)
        report("waiting_for_lock")
        with self.locks.hold(self.key_for(job), deadline):
            result = self._sync_locked(job, self.key_for(job), deadline, report)
        return dataclasses.replace(result, duration_seconds=time.monotonic() - started)

    def _sync_locked(
        self, job: SyncJob, key: str, deadline: Deadline, report: Progress
    ) -> SyncResult:
        root = self.settings.repos_dir / key
        root.mkdir(parents=True, exist_ok=True)
        _write_target_description(root, job)
        self._check_free_space()
        running = root / "sync.running"
        # Present at the start only if the previous run never finished (the
        # process was killed): its children and lock files may be left over.
        crashed = running.exists()
        end_orphan(root / "child.pid", root)
        running.touch()
        try:
            return self._sync_marked(job, root, deadline, report, crashed)
        finally:
            # Not reached when the process is killed: that is the point.
            running.unlink(missing_ok=True)

    def _sync_marked(
        self, job: SyncJob, root: Path, deadline: Deadline, report: Progress, crashed: bool
    ) -> SyncResult:
        redactor = job.redactor()
        pid_file = root / "child.pid"

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
            pid_file=pid_file,
        )
        repo.ensure_initialized()
        if crashed:
            log.warning("the previous sync of %s did not finish; repairing", job.workspace)
            repo.recover_after_crash()

        # 1. Pull first, with this request's own token: nothing is pushed
        #    unless this request proved it may read the workspace.
        report("pulling")
        export_dir = root / "export"
        with_retries(
            lambda: self.wmill.pull(
                workspace=job.workspace,
                token=job.windmill_token,
                export_dir=export_dir,
                scope=job.scope,
                deadline=deadline,
                redactor=redactor,
                pid_file=pid_file,
            ),
            policy=self.settings.retry_policy,
            deadline=deadline,
            what="the Windmill pull",
        )
        export = mirror.scan_export(export_dir)

        with repo.credentials():
            return self._commit_and_push(job, repo, export, deadline, report)

    def _commit_and_push(
        self,
        job: SyncJob,
        repo: GitRepo,
        export: dict[str, Path],
        deadline: Deadline,
        report: Progress,
    ) -> SyncResult:
        policy = self.settings.retry_policy
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            report("fetching")
            tip = with_retries(
                lambda: self._fetch_tip(repo),
                policy=policy,
                deadline=deadline,
                what="the Git fetch",
            )
            base = self._choose_base(repo, tip)
            report("committing")
            repo.checkout_tree(base)
            mirror.mirror(export, repo.work_tree)
            tree = repo.stage_all()
            base_tree = repo.tree_of(base)
            if base is not None and tree == base_tree:
                if base == tip:
                    return SyncResult(job.workspace, job.remote_url, job.branch, False, tip, ())
                commit = base  # earlier commits here that never reached the remote
            else:
                new_changes = repo.diff_trees(base_tree, tree)
                if not job.allow_mass_deletion:
                    self._check_mass_deletion(repo, base, new_changes)
                message = commit_message(job, new_changes, self.settings.windmill_host)
                commit = repo.commit_tree(tree, base, message, job.author, job.author)
                repo.update_ref(repo.local_ref, commit, reason="windmill-git-sync: commit")
            report("pushing")
            outcome = with_retries(
                functools.partial(repo.push, commit),
                policy=policy,
                deadline=deadline,
                what="the Git push",
            )
            if outcome.ok:
                repo.update_ref(repo.tracking_ref, commit, reason="windmill-git-sync: pushed")
                changes = tuple(repo.diff_trees(repo.tree_of(tip), tree))
                return SyncResult(
                    job.workspace,
                    job.remote_url,
                    job.branch,
                    bool(changes),
                    commit,
                    changes,
                    push_attempts=attempt,
                )
            log.info(
                "push of %s rejected: the remote moved on (attempt %d of %d)",
                job.workspace,
                attempt,
                PUSH_ATTEMPTS,
            )
            # Jittered, so two replicas racing for one branch fall out of step.
            time.sleep(
                min(
                    random.uniform(0.1, 0.5) * 2**attempt,  # noqa: S311
                    max(deadline.remaining(), 0),
                )
            )
        raise GitError(
            f"Git push failed: the branch '{job.branch}' kept moving on the remote "
            f"({PUSH_ATTEMPTS} attempts); the commit is kept and will be pushed by the next "
            "sync",
            transient=True,
        )

    def _check_mass_deletion(self, repo: GitRepo, base: str | None, changes: list[Change]) -> None:
        deleted = [
            c
            for c in changes
            if c.status == "deleted" and mirror.is_managed(c.path) and c.path not in _GENERATED
        ]
        if not deleted:
            return
        backed_up = [
            p for p in repo.list_files(base) if mirror.is_managed(p) and p not in _GENERATED
        ]
        share = len(deleted) / max(len(backed_up), 1)
        if len(deleted) == len(backed_up) or share > self.settings.mass_deletion_share:
            raise MassDeletionRefused(
                f"Refusing to push: this sync would delete {len(deleted)} of the "
                f"{len(backed_up)} Windmill files in the backup ({share:.0%}; the limit is "
                f"{self.settings.mass_deletion_share:.0%}). The previous backup is unchanged. "
                "If the workspace really lost these items (check the workspace id and that "
                "the token can see them), repeat the request with "
                '"allow_mass_deletion": true.'
            )

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < self.settings.min_free_bytes:
            raise InsufficientStorage(
                f"Not enough free space in DATA_DIR ({free // 2**20} MiB free, "
                f"{self.settings.min_free_bytes // 2**20} MiB needed); nothing was changed"
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
