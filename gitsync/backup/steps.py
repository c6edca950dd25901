"""One sync of one target as named steps: pull, stage, commit, push.

``SyncService`` makes a ``TargetSync`` per job, under the target's lock and
with the sync's deadline. It pulls the workspace with the wmill CLI (step 1,
``pulling.py``), stages the export as a tree on the commit it builds on
(step 2), commits it after the refusals in ``guards`` (step 3, one commit
per author: ``commits``) and pushes it (step 4), following the sequence in
the shared security notes (c.4, g): the commit's parent is always the remote
tip, the push is a compare-and-swap of ``refs/heads/<branch>``, a rejected
push is rebuilt on the new tip, and a commit that never reached the remote
is pushed by the next sync.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitsync.backup import commits, coverage_step, guards, narrowed, readme
from gitsync.backup.base import choose_base, drop_delivered
from gitsync.backup.job import CommitInfo, Progress, SyncJob, SyncResult, strip_prefix
from gitsync.backup.pulling import Pull
from gitsync.backup.skip import Decision, PullGate
from gitsync.backup.tools import EXPORT_DIR, Tools
from gitsync.config import SecretScanPolicy
from gitsync.deadline import Deadline
from gitsync.errors import CommandError, GitError
from gitsync.git.file_index import FileIndex
from gitsync.git.repo import Change, GitRepo, is_corruption
from gitsync.git.transport import PushOutcome
from gitsync.secretscan.scan import Finding, HeldItem
from gitsync.windmill import items, mirror
from gitsync.windmill.mirror import Snapshot

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class Committed:
    """What step 3 made: the commits (none if nothing but held items changed), and why."""

    made: tuple[CommitInfo, ...]
    tree: str  # the tree committed: the staged one, less the held items
    findings: tuple[Finding, ...] = ()
    held: tuple[HeldItem, ...] = ()


@dataclass
class TargetSync:
    """One job's sync of its target: what the four steps share, and the steps."""

    tools: Tools
    job: SyncJob
    repo: GitRepo
    root: Path
    deadline: Deadline
    report: Progress
    crashed: bool
    # The export's file index: the skip check's, lent to the stage step.
    index: FileIndex = field(default_factory=FileIndex)
    # The export as step 2 walked it, after the pull: staged and remembered.
    export: Snapshot | None = None

    def run(self) -> SyncResult:
        gate = self._gate()
        pull = Pull(self.tools, self.job, self.root, self.deadline, self.crashed)
        # Leaving waits for a fetch begun during the pull: the target's lock
        # is never let go while one still writes to the repository.
        with ThreadPoolExecutor(1, thread_name_prefix="wgs-tip") as early:
            # 1. Pull first, with this request's own token: nothing is pushed
            #    unless this request proved it may read the workspace.
            self.report("pulling")
            pulled = pull.run(
                gate,
                remote_tip=lambda: self.fetch_tip(self.repo),
                early_tip=lambda: early.submit(self._fetch_tip_apart),
            )
            if pulled.skip:
                return self._unchanged(pulled)
            # 2. Stage, 3. commit, 4. push, on the remote's tip.
            result, export = self.commit_and_push(pulled)
        return self._remember(gate, pull, pulled, export, result)

    def commit_and_push(self, pulled: Decision) -> tuple[SyncResult, dict[str, str]]:
        """Steps 2 to 4, on the remote's tip; once more after repairing a damaged copy."""
        first = pulled.early_tip
        if first is None and pulled.tip_known:
            first = _ready(pulled.tip)
        try:
            return self._commit_and_push(first)
        except (GitError, CommandError) as exc:
            if not is_corruption(exc):
                raise
            # A damaged copy (a power loss, a full disk) with no crash marker
            # to say so: repair it (moving it aside if fsck fails, to be
            # rebuilt from the remote) and try once more.
            log.error(
                "the repository of %s is damaged; repairing it",
                self.job.workspace,
                extra={"detail": getattr(exc, "detail", None)},
            )
            if first is not None:
                wait([first])  # a repair never runs under a fetch
            self.repo.recover_after_crash()
            return self._commit_and_push(None)

    def stage(self, base: str | None, export: dict[str, str], readme_text: str) -> str:
        """Step 2: ``base``'s tree with the export (and README) in place, built in memory."""
        return self.repo.stage(
            base,
            export,
            self.job.path_prefix,
            readme_text,
            mirror.is_managed,
            self.index,
            self.export.stats if self.export is not None else None,
        )

    def commit(
        self, export: dict[str, str], base: str | None, base_tree: str, tree: str
    ) -> Committed:
        """Step 3: the refusals first, then one commit per author, on ``base``."""
        job, repo, settings = self.job, self.repo, self.tools.settings
        changes = repo.diff_trees(base_tree, tree)
        if base is not None and not changes:
            return Committed((), tree)
        if not job.allow_mass_deletion:
            guards.check_mass_deletion(settings, repo, base, changes, job.path_prefix)
        findings = guards.scan_for_secrets(
            settings, self.tools.scanner, job, changes, export, self.deadline
        )
        held: tuple[HeldItem, ...] = ()
        if findings and guards.secret_policy(settings, job) is SecretScanPolicy.HOLD:
            tree, held = guards.hold_back(repo, base_tree, tree, changes, findings, job.path_prefix)
            changes = repo.diff_trees(base_tree, tree)
            if not changes:
                return Committed((), tree, findings, held)
        made = commits.commit_by_author(settings, job, repo, base, base_tree, tree, changes)
        repo.update_ref(repo.local_ref, made[-1].commit, reason="windmill-git-sync: commit")
        return Committed(tuple(made), tree, findings, held)

    def push(self, head: str, tip: str | None) -> PushOutcome:
        """Step 4: the remote's branch from ``tip`` to ``head``, compare-and-swap, never forced."""
        return self.tools.retrying(lambda: self.repo.push(head, tip), "the Git push", self.deadline)

    def fetch_tip(self, repo: GitRepo) -> str | None:
        """The remote's tip, through ``repo`` (the run's own handle, or a fetch's own)."""
        return self.tools.retrying(repo.fetch_tip, "the Git fetch", self.deadline)

    def _fetch_tip_apart(self) -> str | None:
        # A handle of its own: see _tips.
        with self.repo.another_handle() as handle:
            return self.fetch_tip(handle)

    # -- the parts of run() ------------------------------------------------

    def _gate(self) -> PullGate:
        job = self.job
        policy = guards.secret_policy(self.tools.settings, job)
        gate = PullGate(
            self.tools.settings,
            self.root,
            self.root / EXPORT_DIR,
            job.scope.wmill_yaml(),
            job.path_prefix,
            scan=f"{policy}:{self.tools.scanner.name}",
        )
        self.index = gate.index
        return gate

    def _unchanged(self, pulled: Decision) -> SyncResult:
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

    def _commit_and_push(
        self, first_tip: Future[str | None] | None
    ) -> tuple[SyncResult, dict[str, str]]:
        job = self.job
        with self._tips(first_tip) as tips:
            # The export is read while the remote is asked for its tip.
            self.export = mirror.snapshot_export(self.root / EXPORT_DIR)
            export = self.export.files
            readme_text = readme.render(
                job.workspace,
                self.tools.settings.windmill_host,
                items.count_items(export),
                job.path_prefix,
            )
            for attempt in range(1, PUSH_ATTEMPTS + 1):
                result = self._attempt(export, readme_text, next(tips), attempt)
                if result is not None:
                    return result, export
                _back_off(attempt, self.deadline)
        raise GitError(
            f"Git push failed: the branch '{job.branch}' kept moving on the remote "
            f"({PUSH_ATTEMPTS} attempts); nothing was pushed, the next sync tries again",
            transient=True,
        )

    def _attempt(
        self, export: dict[str, str], readme_text: str, tip: Future[str | None], attempt: int
    ) -> SyncResult | None:
        """Stage, commit and push once; None when the remote moved on meanwhile."""
        repo = self.repo
        self.report("fetching")
        remote_tip, base, tree = self._prepare(export, readme_text, tip)
        self.report("committing")
        committed = self.commit(export, base, repo.tree_of(base), tree)
        head = committed.made[-1].commit if committed.made else base
        if head is None or head == remote_tip:  # nothing to push
            if remote_tip is not None:
                drop_delivered(repo, remote_tip)
            return self._result(
                False, remote_tip, (), secret_findings=committed.findings, held=committed.held
            )
        self.report("pushing")
        if self.push(head, remote_tip).ok:
            repo.update_ref(repo.tracking_ref, head, reason="windmill-git-sync: pushed")
            drop_delivered(repo, head)
            changes = repo.diff_trees(repo.tree_of(remote_tip), committed.tree)
            return self._result(
                bool(changes),
                head,
                tuple(changes),
                push_attempts=attempt,
                commits=committed.made,
                items=tuple(commits.item_changes(changes, self.job.path_prefix)),
                secret_findings=committed.findings,
                held=committed.held,
            )
        log.info(
            "push of %s rejected: the remote moved on (attempt %d of %d)",
            self.job.workspace,
            attempt,
            PUSH_ATTEMPTS,
        )
        if committed.made:
            # A lost race, not a divergence: go back to this attempt's base,
            # so the next attempt (or sync) builds the export afresh on the
            # new tip instead of keeping this commit as a pending one.
            _reset_local(repo, base, head)
        return None

    def _prepare(
        self, export: dict[str, str], readme_text: str, tip: Future[str | None]
    ) -> tuple[str | None, str | None, str]:
        """The remote's tip, the base to build on, and the tree staged on it.

        Usually the base is our last commit, pushed: the tree is staged on it
        while the remote answers, and again only if the base turns out other.
        """
        expected = self.repo.rev_parse(self.repo.local_ref)
        tree: str | None = None
        try:
            tree = self.stage(expected, export, readme_text)
        except (GitError, CommandError) as exc:
            # Objects the fetch is bringing back, say; staged again below.
            log.info("preparing the commit before the fetch failed: %s", exc)
        remote_tip = tip.result()
        base = choose_base(self.repo, remote_tip)
        if tree is None or base != expected:
            tree = self.stage(base, export, readme_text)
        return remote_tip, base, tree

    @contextmanager
    def _tips(self, first: Future[str | None] | None) -> Iterator[Iterator[Future[str | None]]]:
        """The remote's tip for each attempt, asked in the background.

        The first is ``first`` when the skip check has just fetched it, or
        when a fetch began while the CLI pulled. Each fetch opens a handle of
        its own on the repository: one opened before this run's commits were
        written would advertise them to the remote without seeing them, and a
        thin pack against them could not be resolved. Leaving waits for a
        fetch still running: a repair never runs under one.
        """

        with ThreadPoolExecutor(1, thread_name_prefix="wgs-fetch") as pool:

            def tips() -> Iterator[Future[str | None]]:
                if first is not None:
                    yield first
                while True:
                    yield pool.submit(self._fetch_tip_apart)

            yield tips()

    def _remember(
        self,
        gate: PullGate,
        pull: Pull,
        pulled: Decision,
        export: dict[str, str],
        result: SyncResult,
    ) -> SyncResult:
        """What the next sync needs to skip or narrow its pull, and the coverage of this one."""
        prefix = self.job.path_prefix
        held_files = [strip_prefix(f, prefix) for h in result.held for f in h.files]
        coverage = coverage_step.of_pull(pulled.exchanges, export, self.job.scope, held=held_files)
        # Before the record that lets the next sync skip: a skip answers with it.
        coverage_step.remember(self.root, coverage)
        held = tuple(h.to_dict() for h in result.held)
        gate.remember(pulled.exchanges, result.commit, held, self.export)
        if result.commit is not None:
            last_full = pull.last_full_pull if pull.last_full_pull is not None else time.time()
            narrowed.NarrowState.remember(self.root, pulled.exchanges, last_full)
        return dataclasses.replace(result, pull="ran", pull_reason=pulled.reason, coverage=coverage)

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


def _ready(tip: str | None) -> Future[str | None]:
    done: Future[str | None] = Future()
    done.set_result(tip)
    return done


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
