"""One sync of one target as named steps: pull, stage, commit, push.

``SyncService`` makes a ``TargetSync`` per job, under the target's lock and
with the sync's deadline. It pulls the workspace with the wmill CLI (step
1), stages the export as a tree on the commit it builds on (step 2), commits
it after the refusals in ``guards`` (step 3, one commit per author:
``commits``) and pushes it (step 4), following the sequence in the shared
security notes (c.4, g): the commit's parent is always the remote tip, the
push is a compare-and-swap of ``refs/heads/<branch>``, a rejected push is
rebuilt on the new tip, and a commit that never reached the remote is pushed
by the next sync.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gitsync.backup import commits, coverage_step, guards, narrowed, readme
from gitsync.backup.base import choose_base, drop_delivered
from gitsync.backup.job import CommitInfo, Progress, SyncJob, SyncResult, strip_prefix
from gitsync.backup.skip import Decision, PullGate
from gitsync.config import SecretScanPolicy, Settings
from gitsync.deadline import Deadline
from gitsync.errors import CommandError, GitError, SyncTimeout, WindmillGitSyncError
from gitsync.git.file_index import FileIndex
from gitsync.git.repo import Change, GitRepo, is_corruption
from gitsync.git.transport import PushOutcome
from gitsync.retry import with_retries
from gitsync.secrets import Redactor
from gitsync.secretscan.scan import Finding, HeldItem, SecretScanner
from gitsync.windmill import items, mirror
from gitsync.windmill.recorder import Exchange, PassThrough
from gitsync.windmill.wmill import WmillCli

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3

T = TypeVar("T")


@dataclass
class TargetSync:
    """One job's sync of its target: what the four steps share, and the steps.

    Lives for one run only; what outlives it (settings, the CLI, the secret
    scanner, the retry hook for metrics) is lent by ``SyncService``.
    """

    settings: Settings
    wmill: WmillCli
    scanner: SecretScanner
    on_retry: Callable[[str], None] | None
    job: SyncJob
    repo: GitRepo
    root: Path
    pid_file: Path
    deadline: Deadline
    report: Progress
    crashed: bool
    # The export's file index: the skip check's, lent to the stage step.
    index: FileIndex = field(default_factory=FileIndex)
    # When the last full pull of this target ran (kept while pulls are narrowed).
    last_full_pull: float | None = None

    @property
    def policy(self) -> SecretScanPolicy:
        return guards.secret_policy(self.settings, self.job)

    def run(self) -> SyncResult:
        job, repo = self.job, self.repo
        # 1. Pull first, with this request's own token: nothing is pushed
        #    unless this request proved it may read the workspace.
        self.report("pulling")
        export_dir = self.root / "export"
        gate = PullGate(
            self.settings,
            self.root,
            export_dir,
            job.scope.wmill_yaml(),
            job.path_prefix,
            scan=f"{self.policy}:{self.scanner.name}",
        )
        self.index = gate.index
        pulled = self.pull(gate)
        if pulled.skip:
            # Nothing changed: what was held back is held still, and said again;
            # the coverage of the last pull still holds.
            held = tuple(HeldItem.from_dict(h) for h in pulled.held)
            return self._result(
                False,
                pulled.tip,
                (),
                pull="skipped",
                held=held,
                secret_findings=tuple(f for h in held for f in h.findings),
                coverage=coverage_step.last(self.root),
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
                first_tip = pool.submit(self.fetch_tip, fetcher)
            export = mirror.scan_export(export_dir)
            readme_text = readme.render(
                job.workspace,
                self.settings.windmill_host,
                items.count_items(export),
                job.path_prefix,
            )
            try:
                result = self._commit_and_push(export, readme_text, (first_tip, expected_base))
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
                result = self._commit_and_push(export, readme_text)
        held_files = [strip_prefix(f, job.path_prefix) for h in result.held for f in h.files]
        coverage = coverage_step.of_pull(pulled.exchanges, export, job.scope, held=held_files)
        # Before the record that lets the next sync skip: a skip answers with it.
        coverage_step.remember(self.root, coverage)
        gate.remember(pulled.exchanges, result.commit, tuple(h.to_dict() for h in result.held))
        if result.commit is not None:
            last_full = self.last_full_pull if self.last_full_pull is not None else time.time()
            narrowed.NarrowState.remember(self.root, pulled.exchanges, last_full)
        return dataclasses.replace(result, pull="ran", pull_reason=pulled.reason, coverage=coverage)

    def pull(self, gate: PullGate) -> Decision:
        """Step 1: the workspace into the export directory, with the request's own token.

        Skipped when nothing the pull reads has changed (skip.py); otherwise
        the CLI pulls through the recording pass-through (recorder.py).
        """
        job = self.job
        decision = gate.check(
            job.windmill_token,
            self.deadline,
            crashed=self.crashed,
            remote_tip=lambda: self.fetch_tip(self.repo),
        )
        if decision.skip:
            log.info("nothing the pull reads has changed; the CLI is not started")
            return decision
        state = narrowed.NarrowState.load(self.root)
        gate.forget()
        narrowed.NarrowState.forget(self.root)
        exchanges = self._pull_narrowed(gate, decision, state)
        if exchanges is not None:
            decision.exchanges = exchanges
            self.last_full_pull = state.last_full if state is not None else None
            return decision
        passthrough = PassThrough(
            gate.upstream,
            decision.replay,
            self.deadline.for_command(self.settings.command_timeout),
        )
        attempts = 0
        # The CLI's errors quote its base URL: the run's secret path must not reach an answer.
        redactor = Redactor([job.windmill_token, job.git_token, passthrough.secret], [job.username])

        def pull_once() -> None:
            nonlocal attempts
            attempts += 1
            passthrough.begin_attempt(first=attempts == 1)
            self.wmill.pull(
                workspace=job.workspace,
                token=job.windmill_token,
                export_dir=gate.export_dir,
                scope=job.scope,
                deadline=self.deadline,
                redactor=redactor,
                pid_file=self.pid_file,
                windmill_url=passthrough.url,
            )

        with passthrough.running():
            self._retrying(pull_once, "the Windmill pull")
        decision.exchanges = passthrough.exchanges()
        return decision

    def _pull_narrowed(
        self, gate: PullGate, decision: Decision, state: narrowed.NarrowState | None
    ) -> list[Exchange] | None:
        """Step 1 for only the items that changed (backup/narrowed.py); None: pull in full."""
        job = self.job
        choice = narrowed.choose(self.settings, state, decision.replay, job.scope)
        if isinstance(choice, str):
            log.info("full pull: %s", choice)
            return None

        def pull(directory: Path, passthrough: PassThrough) -> None:
            self.wmill.pull(
                workspace=job.workspace,
                token=job.windmill_token,
                export_dir=directory,
                scope=job.scope,
                deadline=self.deadline,
                redactor=Redactor(
                    [job.windmill_token, job.git_token, passthrough.secret], [job.username]
                ),
                pid_file=self.pid_file,
                windmill_url=passthrough.url,
                includes=choice.plan.includes,
            )

        try:
            return narrowed.run(
                choice,
                upstream=gate.upstream,
                replay=decision.replay,
                timeout=self.deadline.for_command(self.settings.command_timeout),
                root=self.root,
                export_dir=gate.export_dir,
                pull=pull,
            )
        except SyncTimeout:
            raise
        except (WindmillGitSyncError, OSError) as exc:
            # The full pull that follows meets (and reports) a lasting failure.
            log.warning("the narrowed pull failed (%s); pulling in full", type(exc).__name__)
            return None

    def _commit_and_push(
        self,
        export: dict[str, str],
        readme_text: str,
        early_fetch: tuple[Future[str | None], str | None] | None = None,
    ) -> SyncResult:
        job, repo = self.job, self.repo
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            self.report("fetching")
            prepared = False
            if attempt == 1 and early_fetch is not None:
                first_tip, expected_base = early_fetch
                # Usually the base is our last commit, pushed: prepare the tree
                # on it while the remote answers, and again if it is not.
                try:
                    tree = self.stage(expected_base, export, readme_text)
                    prepared = True
                except (GitError, CommandError) as exc:
                    # Objects the fetch is bringing back, say; done again below.
                    log.info("preparing the commit before the fetch failed: %s", exc)
                tip = first_tip.result()
                base = choose_base(repo, tip)
                prepared = prepared and base == expected_base
            else:
                tip = self.fetch_tip(repo)
                base = choose_base(repo, tip)
            self.report("committing")
            if not prepared:
                tree = self.stage(base, export, readme_text)
            base_tree = repo.tree_of(base)
            made: list[CommitInfo] = []
            findings: tuple[Finding, ...] = ()
            held: tuple[HeldItem, ...] = ()
            if base is None or tree != base_tree:
                made, findings, held, tree = self.commit(export, base, base_tree, tree)
            if made:
                head = made[-1].commit
            elif base is None or base == tip:
                if tip is not None:
                    drop_delivered(repo, tip)
                return self._result(False, tip, (), secret_findings=findings, held=held)
            else:
                head = base  # earlier commits here that never reached the remote
            self.report("pushing")
            outcome = self.push(head, tip)
            if outcome.ok:
                repo.update_ref(repo.tracking_ref, head, reason="windmill-git-sync: pushed")
                drop_delivered(repo, head)
                changes = repo.diff_trees(repo.tree_of(tip), tree)
                return self._result(
                    bool(changes),
                    head,
                    tuple(changes),
                    push_attempts=attempt,
                    commits=tuple(made),
                    items=tuple(commits.item_changes(changes, job.path_prefix)),
                    secret_findings=findings,
                    held=held,
                )
            log.info(
                "push of %s rejected: the remote moved on (attempt %d of %d)",
                job.workspace,
                attempt,
                PUSH_ATTEMPTS,
            )
            if made:
                # A lost race, not a divergence: go back to this attempt's base,
                # so the next attempt (or sync) builds the export afresh on the
                # new tip instead of keeping this commit as a pending one.
                _reset_local(repo, base, head)
            _back_off(attempt, self.deadline)
        raise GitError(
            f"Git push failed: the branch '{job.branch}' kept moving on the remote "
            f"({PUSH_ATTEMPTS} attempts); nothing was pushed, the next sync tries again",
            transient=True,
        )

    def stage(self, base: str | None, export: dict[str, str], readme_text: str) -> str:
        """Step 2: ``base``'s tree with the export (and README) in place, built in memory."""
        return self.repo.stage(
            base, export, self.job.path_prefix, readme_text, mirror.is_managed, self.index
        )

    def commit(
        self, export: dict[str, str], base: str | None, base_tree: str, tree: str
    ) -> tuple[list[CommitInfo], tuple[Finding, ...], tuple[HeldItem, ...], str]:
        """Step 3: the refusals first, then one commit per author, on ``base``.

        Returns the commits (none if only held items changed), the secret
        findings, the items held back for them, and the tree committed.
        """
        job, repo = self.job, self.repo
        changes = repo.diff_trees(base_tree, tree)
        if not job.allow_mass_deletion:
            guards.check_mass_deletion(self.settings, repo, base, changes, job.path_prefix)
        findings = guards.scan_for_secrets(
            self.settings, self.scanner, job, changes, export, self.deadline
        )
        held: tuple[HeldItem, ...] = ()
        if findings and self.policy is SecretScanPolicy.HOLD:
            tree, held = guards.hold_back(repo, base_tree, tree, changes, findings, job.path_prefix)
            changes = repo.diff_trees(base_tree, tree)
            if not changes:
                return [], findings, held, tree
        made = commits.commit_by_author(self.settings, job, repo, base, base_tree, tree, changes)
        repo.update_ref(repo.local_ref, made[-1].commit, reason="windmill-git-sync: commit")
        return made, findings, held, tree

    def push(self, head: str, tip: str | None) -> PushOutcome:
        """Step 4: the remote's branch from ``tip`` to ``head``, compare-and-swap, never forced."""
        return self._retrying(lambda: self.repo.push(head, tip), "the Git push")

    def fetch_tip(self, repo: GitRepo) -> str | None:
        """The remote's tip, through ``repo`` (the run's own handle, or the fetcher's)."""
        return self._retrying(repo.fetch_tip, "the Git fetch")

    def _retrying(self, attempt: Callable[[], T], what: str) -> T:
        return with_retries(
            attempt,
            policy=self.settings.retry_policy,
            deadline=self.deadline,
            what=what,
            on_retry=self.on_retry,
        )

    def _result(
        self, changed: bool, commit: str | None, changes: tuple[Change, ...], **more: Any
    ) -> SyncResult:
        job = self.job
        return SyncResult(
            job.workspace,
            job.remote_url,
            job.branch,
            changed,
            commit,
            changes,
            scope=job.scope,
            path_prefix=job.path_prefix,
            **more,
        )


def _reset_local(repo: GitRepo, base: str | None, head: str) -> None:
    if base is None:
        repo.delete_ref(repo.local_ref, head)
    else:
        repo.update_ref(repo.local_ref, base, head, reason="windmill-git-sync: push rejected")


def _back_off(attempt: int, deadline: Deadline) -> None:
    # Jittered, so two replicas racing for one branch fall out of step.
    time.sleep(
        min(
            random.uniform(0.1, 0.5) * 2**attempt,  # noqa: S311
            max(deadline.remaining(), 0),
        )
    )
