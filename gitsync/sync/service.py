"""The sync as named steps: pull, stage, commit, push.

This module knows nothing of HTTP. Under a per-target lock and a deadline,
``SyncService`` pulls the workspace with the wmill CLI (step 1), stages the
export as a tree on the commit it builds on (step 2), commits it after the
refusals in ``guards`` (step 3, one commit per author: ``commits``) and
pushes it (step 4), following the sequence in the shared security notes
(c.4, g): the commit's parent is always the remote tip, the push is a
compare-and-swap of ``refs/heads/<branch>``, a rejected push is rebuilt on
the new tip, and a commit that never reached the remote is pushed by the
next sync.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import logging
import random
import shutil
import time
import urllib.parse
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import CommandError, GitError
from gitsync.git.file_index import FileIndex
from gitsync.git.repo import GitRepo, is_corruption
from gitsync.git.transport import PushOutcome
from gitsync.retry import with_retries
from gitsync.secrets import Redactor
from gitsync.sync import commits, guards, readme
from gitsync.sync.base import choose_base
from gitsync.sync.job import CommitInfo, Progress, SyncJob, SyncResult, target_key
from gitsync.sync.locks import TargetLocks
from gitsync.sync.scan import Finding, SecretScanner
from gitsync.sync.skip import Decision, PullGate
from gitsync.sync.workspaces import sync_every_workspace
from gitsync.windmill import items, mirror
from gitsync.windmill.process import end_orphan
from gitsync.windmill.recorder import PassThrough
from gitsync.windmill.wmill import WmillCli

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
# Records the running wmill child's process group, for ending it after a crash.
# (Git runs in-process: there is no other child.)
_MAIN_PID_FILE = "child.pid"
# What earlier versions kept per target: a git work tree, git's HOME, the
# pid file of a git fetch running beside the pull.
_OBSOLETE = ("worktree", "home", "fetch.pid")


class SyncService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.wmill = WmillCli(settings)
        self.locks = TargetLocks(settings.data_dir / "locks")
        self.scanner = SecretScanner(entropy=settings.secret_scan_entropy)
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

    def sync(self, job: SyncJob, progress: Progress | None = None) -> SyncResult:
        if job.workspace == "*":
            return sync_every_workspace(self.settings, job, progress, self.sync)
        started = time.monotonic()
        deadline = Deadline(self.settings.sync_timeout)
        report = progress or (lambda phase: None)
        report("waiting_for_lock")
        key = self.key_for(job)
        with self.locks.hold(key, deadline):
            result = self._sync_locked(job, key, deadline, report)
        return dataclasses.replace(result, duration_seconds=time.monotonic() - started)

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
        end_orphan(root / _MAIN_PID_FILE, root)
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
            return self._sync_repo(job, repo, root, deadline, report, crashed)
        finally:
            repo.close()
            # dulwich's objects form reference cycles: without this the
            # process settles near twice its working size (docs: dulwich.md 7).
            gc.collect()

    def _sync_repo(
        self,
        job: SyncJob,
        repo: GitRepo,
        root: Path,
        deadline: Deadline,
        report: Progress,
        crashed: bool,
    ) -> SyncResult:
        pid_file = root / _MAIN_PID_FILE
        repo.ensure_initialized()
        if crashed:
            log.warning("the previous sync of %s did not finish; repairing", job.workspace)
            repo.recover_after_crash()

        # 1. Pull first, with this request's own token: nothing is pushed
        #    unless this request proved it may read the workspace.
        report("pulling")
        export_dir = root / "export"
        gate = PullGate(self.settings, root, export_dir, job.scope.wmill_yaml(), job.path_prefix)
        pulled = self._pull_or_skip(job, repo, gate, deadline, pid_file, crashed)
        if pulled.skip:
            return SyncResult(
                job.workspace,
                job.remote_url,
                job.branch,
                False,
                pulled.tip,
                (),
                scope=job.scope,
                path_prefix=job.path_prefix,
                pull="skipped",
            )
        # The remote is asked for its tip (a network round trip) while the
        # export is checked and the commit prepared on the tip we expect (the
        # disk); only now that the pull has proved the request's Windmill
        # token. The fetch has its own handle on the repository.
        fetcher = repo.another_handle()
        expected_base = repo.rev_parse(repo.local_ref)
        with (
            fetcher,
            ThreadPoolExecutor(1, thread_name_prefix="wgs-fetch") as pool,
        ):
            if pulled.tip_known:
                # The skip check has just fetched it: no second fetch.
                first_tip: Future[str | None] = Future()
                first_tip.set_result(pulled.tip)
            else:
                first_tip = pool.submit(self._fetch_tip_retrying, fetcher, deadline)
            export = mirror.scan_export(export_dir)
            readme_text = readme.render(
                job.workspace,
                self.settings.windmill_host,
                items.count_items(export),
                job.path_prefix,
            )
            try:
                result = self._commit_and_push(
                    job,
                    repo,
                    export,
                    gate.index,
                    readme_text,
                    deadline,
                    report,
                    (first_tip, expected_base),
                )
            except (GitError, CommandError) as exc:
                if not is_corruption(exc):
                    raise
                futures.wait([first_tip])  # no repair under a running fetch
                # A damaged copy (a power loss, a full disk) with no crash
                # marker to say so: repair it (moving it aside if fsck fails,
                # to be rebuilt from the remote) and try once more.
                log.error(
                    "the repository of %s is damaged; repairing it",
                    job.workspace,
                    extra={"detail": getattr(exc, "detail", None)},
                )
                repo.recover_after_crash()
                result = self._commit_and_push(
                    job, repo, export, gate.index, readme_text, deadline, report
                )
        gate.remember(pulled.exchanges, result.commit)
        return dataclasses.replace(result, pull="ran", pull_reason=pulled.reason)

    def _pull_or_skip(
        self,
        job: SyncJob,
        repo: GitRepo,
        gate: PullGate,
        deadline: Deadline,
        pid_file: Path,
        crashed: bool,
    ) -> Decision:
        """Step 1: the workspace into the export directory, with the request's own token.

        Skipped when nothing the pull reads has changed (skip.py); otherwise
        the CLI pulls through the recording pass-through (recorder.py).
        """

        def remote_tip() -> str | None:
            return self._fetch_tip_retrying(repo, deadline)

        decision = gate.check(job.windmill_token, deadline, crashed=crashed, remote_tip=remote_tip)
        if decision.skip:
            log.info("nothing the pull reads has changed; the CLI is not started")
            return decision
        gate.forget()
        passthrough = PassThrough(
            gate.upstream, decision.replay, deadline.for_command(self.settings.command_timeout)
        )
        attempts = 0
        # The CLI's errors quote its base URL: the run's secret path must not reach an answer.
        redactor = Redactor([job.windmill_token, job.git_token, passthrough.secret], [job.username])

        def pull() -> None:
            nonlocal attempts
            attempts += 1
            passthrough.begin_attempt(first=attempts == 1)
            self.wmill.pull(
                workspace=job.workspace,
                token=job.windmill_token,
                export_dir=gate.export_dir,
                scope=job.scope,
                deadline=deadline,
                redactor=redactor,
                pid_file=pid_file,
                windmill_url=passthrough.url,
            )

        with passthrough.running():
            with_retries(
                pull,
                policy=self.settings.retry_policy,
                deadline=deadline,
                what="the Windmill pull",
                on_retry=self.on_retry,
            )
        decision.exchanges = passthrough.exchanges()
        return decision

    def _commit_and_push(
        self,
        job: SyncJob,
        repo: GitRepo,
        export: dict[str, str],
        index: FileIndex,
        readme_text: str,
        deadline: Deadline,
        report: Progress,
        early_fetch: tuple[Future[str | None], str | None] | None = None,
    ) -> SyncResult:
        done = functools.partial(
            SyncResult,
            job.workspace,
            job.remote_url,
            job.branch,
            scope=job.scope,
            path_prefix=job.path_prefix,
        )
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            report("fetching")
            prepared = False
            if attempt == 1 and early_fetch is not None:
                first_tip, expected_base = early_fetch
                # Usually the base is our last commit, pushed: prepare the tree
                # on it while the remote answers, and again if it is not.
                try:
                    tree = self._stage(repo, expected_base, export, index, job, readme_text)
                    prepared = True
                except (GitError, CommandError) as exc:
                    # Objects the fetch is bringing back, say; done again below.
                    log.info("preparing the commit before the fetch failed: %s", exc)
                tip = first_tip.result()
                base = choose_base(repo, tip)
                prepared = prepared and base == expected_base
            else:
                tip = self._fetch_tip_retrying(repo, deadline)
                base = choose_base(repo, tip)
            report("committing")
            if not prepared:
                tree = self._stage(repo, base, export, index, job, readme_text)
            base_tree = repo.tree_of(base)
            made: list[CommitInfo] = []
            findings: tuple[Finding, ...] = ()
            if base is not None and tree == base_tree:
                if base == tip:
                    return done(False, tip, ())
                head = base  # earlier commits here that never reached the remote
            else:
                made, findings = self._commit(job, repo, export, base, base_tree, tree)
                head = made[-1].commit
            report("pushing")
            outcome = self._push(repo, head, tip, deadline)
            if outcome.ok:
                repo.update_ref(repo.tracking_ref, head, reason="windmill-git-sync: pushed")
                changes = repo.diff_trees(repo.tree_of(tip), tree)
                return done(
                    bool(changes),
                    head,
                    tuple(changes),
                    push_attempts=attempt,
                    commits=tuple(made),
                    items=tuple(commits.item_changes(changes, job.path_prefix)),
                    secret_findings=findings,
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

    @staticmethod
    def _stage(
        repo: GitRepo,
        base: str | None,
        export: dict[str, str],
        index: FileIndex,
        job: SyncJob,
        readme_text: str,
    ) -> str:
        """Step 2: ``base``'s tree with the export (and README) in place, built in memory."""
        return repo.stage(base, export, job.path_prefix, readme_text, mirror.is_managed, index)

    def _commit(
        self,
        job: SyncJob,
        repo: GitRepo,
        export: dict[str, str],
        base: str | None,
        base_tree: str,
        tree: str,
    ) -> tuple[list[CommitInfo], tuple[Finding, ...]]:
        """Step 3: the refusals first, then one commit per author, on ``base``."""
        changes = repo.diff_trees(base_tree, tree)
        if not job.allow_mass_deletion:
            guards.check_mass_deletion(self.settings, repo, base, changes, job.path_prefix)
        findings = guards.scan_for_secrets(self.settings, self.scanner, job, changes, export)
        made = commits.commit_by_author(self.settings, job, repo, base, base_tree, tree, changes)
        repo.update_ref(repo.local_ref, made[-1].commit, reason="windmill-git-sync: commit")
        return made, findings

    def _push(self, repo: GitRepo, head: str, tip: str | None, deadline: Deadline) -> PushOutcome:
        """Step 4: the remote's branch from ``tip`` to ``head``, compare-and-swap, never forced."""
        return with_retries(
            functools.partial(repo.push, head, tip),
            policy=self.settings.retry_policy,
            deadline=deadline,
            what="the Git push",
            on_retry=self.on_retry,
        )

    def _fetch_tip_retrying(self, repo: GitRepo, deadline: Deadline) -> str | None:
        return with_retries(
            lambda: self._fetch_tip(repo),
            policy=self.settings.retry_policy,
            deadline=deadline,
            what="the Git fetch",
            on_retry=self.on_retry,
        )

    @staticmethod
    def _fetch_tip(repo: GitRepo) -> str | None:
        return repo.fetch_tip()


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
