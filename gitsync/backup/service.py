"""The long-lived sync service: one target at a time under its lock and deadline.

This module knows nothing of HTTP. ``SyncService`` holds what outlives a
sync (the settings, the CLI, the per-target locks, the secret scanner, the
retry hook for metrics); for each job it takes the target's lock, marks the
run as started (so a crash shows at the next one), opens the target's
repository and hands the steps themselves to a ``TargetSync`` (``steps``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from gitsync.backup import guards
from gitsync.backup.job import Progress, SyncJob, SyncResult
from gitsync.backup.steps import TargetSync
from gitsync.backup.tools import EXPORT_DIR, PID_FILE, Tools
from gitsync.backup.workspaces import sync_every_workspace
from gitsync.config import SecretScanPolicy, Settings
from gitsync.deadline import Deadline
from gitsync.git.repo import GitRepo
from gitsync.secretscan.scan import SecretScanner
from gitsync.targets import TargetLocks, target_key
from gitsync.windmill.process import end_orphan
from gitsync.windmill.version import ServerVersion
from gitsync.windmill.wmill import WmillCli

log = logging.getLogger(__name__)

# What earlier versions kept per target: a git work tree, git's HOME, the
# pid file of a git fetch running beside the pull.
_OBSOLETE = ("worktree", "home", "fetch.pid")


class SyncService:
    """Syncs one target at a time; long-lived, it lends each run what outlives it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wmill = WmillCli(settings)
        self.locks = TargetLocks(settings.data_dir / "locks")
        self.scanner = SecretScanner(entropy=settings.secret_scan_entropy)
        # Windmill's version, cached: each answer states it beside the CLI's.
        self.windmill_version = ServerVersion(
            settings.windmill_base_url,
            extra_ca=settings.node_extra_ca_certs,
            max_minor_skew=settings.windmill_version_skew_warn_minor,
        )
        # Called with a step's name on each retry (metrics).
        self.on_retry: Callable[[str], None] | None = None

    def prepare_data_dir(self) -> None:
        for path in (self.settings.data_dir, self.settings.repos_dir, self.settings.tmp_dir):
            path.mkdir(parents=True, exist_ok=True)

    def key_for(self, job: SyncJob) -> str:
        return target_key(
            self.settings.windmill_base_url,
            job.workspace,
            job.remote_url,
            job.branch,
            job.path_prefix,
        )

    def sync(
        self, job: SyncJob, progress: Progress | None = None, deadline: Deadline | None = None
    ) -> SyncResult:
        """Sync one target; ``deadline`` (default: SYNC_TIMEOUT from now) bounds all of it."""
        deadline = deadline or Deadline(self.settings.sync_timeout)
        if job.workspace == "*":
            every = sync_every_workspace(self.settings, job, progress, self.sync, deadline)
            return dataclasses.replace(every, versions=self.windmill_version.current())
        started = time.monotonic()
        report = progress or (lambda phase: None)
        report("waiting_for_lock")
        key = self.key_for(job)
        with self.locks.hold(key, deadline):
            result = self._sync_locked(job, key, deadline, report)
        return dataclasses.replace(
            result,
            duration_seconds=time.monotonic() - started,
            versions=self.windmill_version.current(),
        )

    def after_answer(self, job: SyncJob) -> None:
        """What may wait until the caller has its answer: the screen learns the lock file.

        Nearly every change rewrites ``wmill-lock.yaml`` (130 KB at 1000
        items, 650 KB at 5000). Screened now, as it stands, the next change's
        scan matches only its new lines: the first change after a start too,
        once any sync has run (secretscan/screen.py). Not for every workspace
        at once: that job's targets are many, and each learns when synced alone.
        """
        if job.workspace == "*" or guards.secret_policy(self.settings, job) is SecretScanPolicy.OFF:
            return
        export = self.settings.repos_dir / self.key_for(job) / EXPORT_DIR
        # The path as the sync's own walk spells it (mirror.snapshot_export).
        self.scanner.learn(os.path.join(export, "wmill-lock.yaml"))

    def _sync_locked(
        self, job: SyncJob, key: str, deadline: Deadline, report: Progress
    ) -> SyncResult:
        root = self.settings.repos_dir / key
        root.mkdir(parents=True, exist_ok=True)
        _write_target_description(root, job)
        guards.check_free_space(self.settings)
        running = root / "sync.running"
        # Present at the start only if the previous run never finished (the
        # process was killed): its children and lock files may be left over.
        crashed = running.exists()
        end_orphan(root / PID_FILE, root)
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
        for name in _OBSOLETE:
            if (root / name).is_dir():
                shutil.rmtree(root / name)
            else:
                (root / name).unlink(missing_ok=True)

        repo = GitRepo(
            settings=self.settings,
            git_dir=root / "repo.git",
            remote_url=job.remote_url,
            branch=job.branch,
            token=job.git_token,
            username=job.username,
            redactor=redactor,
            deadline=deadline,
        )
        try:
            repo.ensure_initialized()
            if crashed:
                log.warning("the previous sync of %s did not finish; repairing", job.workspace)
                repo.recover_after_crash()
            return TargetSync(
                tools=Tools(self.settings, self.wmill, self.scanner, self.on_retry),
                job=job,
                repo=repo,
                root=root,
                deadline=deadline,
                report=report,
                crashed=crashed,
            ).run()
        finally:
            repo.close()


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
