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
import re
import shutil
import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gitsync.config import SecretScanPolicy, Settings
from gitsync.deadline import Deadline
from gitsync.errors import (
    CommandError,
    GitError,
    InsufficientStorage,
    MassDeletionRefused,
    SecretDetected,
    SyncError,
    WindmillAuthError,
    WindmillError,
    WindmillGitSyncError,
)
from gitsync.git.credentials import default_username
from gitsync.git.repo import Change, GitRepo, Identity, is_corruption
from gitsync.retry import with_retries
from gitsync.secrets import Redactor, Secret
from gitsync.sync import readme
from gitsync.sync.locks import TargetLocks
from gitsync.sync.scan import ALLOWLIST_COMMENT, Finding, SecretScanner, effective_policy
from gitsync.sync.skip import Decision, PullGate
from gitsync.windmill import attribution, items, mirror
from gitsync.windmill.api import WindmillApi
from gitsync.windmill.items import ItemChange, ItemRef
from gitsync.windmill.process import end_orphan
from gitsync.windmill.recorder import PassThrough
from gitsync.windmill.wmill import CLI_VERSION, Scope, WmillCli

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3
# Changed paths listed in a commit body and a response; counts are always whole.
MAX_LISTED_CHANGES = 500
# Secret findings named in an error message; the answer's list holds them all.
MAX_LISTED_FINDINGS = 20
# Files regenerated on every pull: never counted as backed-up content.
_GENERATED = frozenset({"wmill.yaml", "wmill-lock.yaml"})

Progress = Callable[[str], None]
# Each records a running child's process group, for ending it after a crash:
# the sync's main line of work, and the fetch that runs beside it.
_MAIN_PID_FILE = "child.pid"
_FETCH_PID_FILE = "fetch.pid"
_WORKSPACE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,49}")


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
    # Sub-directory of the repository this workspace lives in ("" = the root).
    path_prefix: str = ""
    # The request's secret-scan policy, if it named one (see effective_policy).
    secret_scan: SecretScanPolicy | None = None

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
                self.path_prefix,
                self.secret_scan,
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
    commits: tuple[CommitInfo, ...] = ()
    items: tuple[ItemChange, ...] = ()
    scope: Scope = field(default_factory=Scope)
    path_prefix: str = ""
    # With workspace "*": one result per workspace.
    workspaces: tuple[SyncResult, ...] = ()
    # Secrets found and pushed anyway (SECRET_SCAN=warn); never their values.
    secret_findings: tuple[Finding, ...] = ()
    # "skipped" when nothing the CLI reads had changed (skip.py); why it ran otherwise.
    pull: str = "ran"
    pull_reason: str | None = None

    def count(self, status: str) -> int:
        own = sum(1 for c in self.changes if c.status == status)
        return own + sum(r.count(status) for r in self.workspaces)

    def to_dict(self) -> dict[str, object]:
        if self.workspace == "*":
            return {
                "workspace": "*",
                "remote": self.remote_url,
                "branch": self.branch,
                "changed": self.changed,
                "commit": self.commit,
                "added": self.count("added"),
                "modified": self.count("modified"),
                "deleted": self.count("deleted"),
                "files": [],
                "workspaces": [r.to_dict() for r in self.workspaces],
                "duration_seconds": round(self.duration_seconds, 3),
            }
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
            "items": [
                {
                    "kind": c.item.kind,
                    "path": c.item.path,
                    "change": c.change,
                    **({"old_path": c.old_path} if c.old_path else {}),
                }
                for c in self.items[:MAX_LISTED_CHANGES]
            ],
            "commits": [c.to_dict() for c in self.commits],
            "secret_findings": [f.to_dict() for f in self.secret_findings],
            "path_prefix": self.path_prefix,
            "scope": self.scope.describe(),
            "pull": self.pull,
            **({"pull_reason": self.pull_reason} if self.pull_reason else {}),
            "duration_seconds": round(self.duration_seconds, 3),
        }


@dataclass(frozen=True)
class CommitInfo:
    commit: str
    author: Identity
    subject: str
    items: int

    def to_dict(self) -> dict[str, object]:
        return {
            "commit": self.commit,
            "author": f"{self.author.name} <{self.author.email}>",
            "subject": self.subject,
            "items": self.items,
        }


def target_key(
    windmill_base_url: str, workspace: str, remote_url: str, branch: str, path_prefix: str = ""
) -> str:
    material = "\n".join((windmill_base_url, workspace, remote_url, branch))
    if path_prefix:
        material += "\n" + path_prefix
    return hashlib.sha256(material.encode()).hexdigest()[:24]


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
            return self._sync_every_workspace(job, progress)
        started = time.monotonic()
        deadline = Deadline(self.settings.sync_timeout)
        report = progress or (lambda phase: None)
        report("waiting_for_lock")
        key = self.key_for(job)
        with self.locks.hold(key, deadline):
            result = self._sync_locked(job, key, deadline, report)
        return dataclasses.replace(result, duration_seconds=time.monotonic() - started)

    def _sync_every_workspace(self, job: SyncJob, progress: Progress | None) -> SyncResult:
        """Each workspace the token can see, under its own sub-directory, one after another."""
        started = time.monotonic()
        api = WindmillApi(
            self.settings.windmill_base_url,
            job.windmill_token,
            extra_ca=self.settings.node_extra_ca_certs,
        )
        try:
            listing = api.get_json("workspaces/list")
            ids = sorted(str(w["id"]) for w in listing)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise WindmillAuthError(
                    "Windmill rejected the token when listing workspaces"
                ) from None
            raise WindmillError(
                f"Windmill answered HTTP {exc.code} when listing workspaces",
                transient=exc.code >= 500,
            ) from None
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
            raise WindmillError(
                f"Could not list workspaces at {self.settings.windmill_base_url}", transient=True
            ) from None
        results: list[SyncResult] = []
        failures: list[tuple[str, WindmillGitSyncError]] = []
        for workspace in ids:
            if not _WORKSPACE_ID.fullmatch(workspace):
                # It becomes a directory name: never one Windmill could steer.
                failures.append(
                    (workspace, WindmillError("Windmill listed an invalid workspace id; skipped"))
                )
                continue
            one = dataclasses.replace(
                job, workspace=workspace, path_prefix=_join(job.path_prefix, workspace)
            )
            try:
                results.append(self.sync(one, progress))
            except WindmillGitSyncError as exc:
                failures.append((workspace, exc))
        if failures:
            error = SyncError(
                f"{len(failures)} of {len(ids)} workspaces failed: "
                + "; ".join(f"{ws}: {exc.message}" for ws, exc in failures)
            )
            error.response_extra = {
                "workspaces": [r.to_dict() for r in results]
                + [
                    {"workspace": ws, "success": False, "error": exc.code, "message": exc.message}
                    for ws, exc in failures
                ]
            }
            raise error
        commits = [r.commit for r in results if r.commit]
        return SyncResult(
            "*",
            job.remote_url,
            job.branch,
            any(r.changed for r in results),
            commits[-1] if commits else None,
            (),
            duration_seconds=time.monotonic() - started,
            workspaces=tuple(results),
        )

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
        for pid_file in (_MAIN_PID_FILE, _FETCH_PID_FILE):
            end_orphan(root / pid_file, root)
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
        pid_file = root / _MAIN_PID_FILE

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
        # token. The fetch has its own pid file: two children run at once.
        fetcher = dataclasses.replace(repo, pid_file=root / _FETCH_PID_FILE)
        expected_base = repo.rev_parse(repo.local_ref)
        with (
            repo.credentials(),
            fetcher.credentials(),
            ThreadPoolExecutor(1, thread_name_prefix="wgs-fetch") as pool,
        ):
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
                    job, repo, export, readme_text, deadline, report, (first_tip, expected_base)
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
                result = self._commit_and_push(job, repo, export, readme_text, deadline, report)
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
        """Skip the pull if nothing it reads changed (skip.py); else pull, recorded."""

        def remote_tip() -> str | None:
            with repo.credentials():
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
        readme_text: str,
        deadline: Deadline,
        report: Progress,
        early_fetch: tuple[Future[str | None], str | None] | None = None,
    ) -> SyncResult:
        policy = self.settings.retry_policy
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
                    tree = self._prepare_tree(job, repo, expected_base, export, readme_text)
                    prepared = True
                except (GitError, CommandError) as exc:
                    # Objects the fetch is bringing back, say; done again below.
                    log.info("preparing the commit before the fetch failed: %s", exc)
                tip = first_tip.result()
                base = self._choose_base(repo, tip)
                prepared = prepared and base == expected_base
            else:
                tip = self._fetch_tip_retrying(repo, deadline)
                base = self._choose_base(repo, tip)
            report("committing")
            if not prepared:
                tree = self._prepare_tree(job, repo, base, export, readme_text)
            base_tree = repo.tree_of(base)
            commits: list[CommitInfo] = []
            findings: tuple[Finding, ...] = ()
            if base is not None and tree == base_tree:
                if base == tip:
                    return done(False, tip, ())
                head = base  # earlier commits here that never reached the remote
            else:
                new_changes = repo.diff_trees(base_tree, tree)
                if not job.allow_mass_deletion:
                    self._check_mass_deletion(repo, base, new_changes, job.path_prefix)
                findings = self._scan_for_secrets(job, new_changes, export)
                commits = self._commit(job, repo, base, base_tree, tree, new_changes)
                head = commits[-1].commit
                repo.update_ref(repo.local_ref, head, reason="windmill-git-sync: commit")
            report("pushing")
            outcome = with_retries(
                functools.partial(repo.push, head),
                policy=policy,
                deadline=deadline,
                what="the Git push",
                on_retry=self.on_retry,
            )
            if outcome.ok:
                repo.update_ref(repo.tracking_ref, head, reason="windmill-git-sync: pushed")
                changes = repo.diff_trees(repo.tree_of(tip), tree)
                return done(
                    bool(changes),
                    head,
                    tuple(changes),
                    push_attempts=attempt,
                    commits=tuple(commits),
                    items=tuple(self._item_changes(changes, job.path_prefix)),
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
    def _prepare_tree(
        job: SyncJob, repo: GitRepo, base: str | None, export: dict[str, str], readme_text: str
    ) -> str:
        """The tree of ``base`` with the export (and README) in place; staged."""
        repo.checkout_tree(base)
        mirror.mirror(export, repo.work_tree, job.path_prefix)
        readme.place(repo.work_tree, job.path_prefix, readme_text)
        return repo.stage_all()

    @staticmethod
    def _item_changes(changes: list[Change], prefix: str) -> list[ItemChange]:
        relative = [
            dataclasses.replace(c, path=_strip_prefix(c.path, prefix))
            for c in changes
            if _under(c.path, prefix)
        ]
        return items.group_changes(relative, {c.path: c.blob for c in relative})

    def _commit(
        self,
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
        item_changes = self._item_changes(changes, job.path_prefix)
        existing = [c for c in item_changes if c.change != "deleted"]
        authors = (
            attribution.attribute(
                WindmillApi(
                    self.settings.windmill_base_url,
                    job.windmill_token,
                    extra_ca=self.settings.node_extra_ca_certs,
                ),
                job.workspace,
                existing,
            )
            if existing
            else {}
        )
        groups: dict[Identity | None, list[ItemChange]] = {}
        for change in item_changes:
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
                paths = {_join(job.path_prefix, f) for c in group for f in c.files}
                next_tree = repo.tree_with(current, {p: entries.get(p) for p in paths})
            if next_tree == current:
                continue
            text = commit_message(job, group, authors, self.settings.windmill_host)
            author = who or job.author
            commit = repo.commit_tree(next_tree, parent, text, author, job.author)
            commits.append(CommitInfo(commit, author, text.splitlines()[0], len(group)))
            parent, current = commit, next_tree
        return commits

    def _check_mass_deletion(
        self, repo: GitRepo, base: str | None, changes: list[Change], prefix: str
    ) -> None:
        def counted(path: str) -> bool:
            if not _under(path, prefix):
                return False
            rel = _strip_prefix(path, prefix)
            return mirror.is_managed(rel) and rel not in _GENERATED

        deleted = [c for c in changes if c.status == "deleted" and counted(c.path)]
        if not deleted:
            return
        backed_up = [p for p in repo.list_files(base) if counted(p)]
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

    def _scan_for_secrets(
        self, job: SyncJob, changes: list[Change], export: dict[str, str]
    ) -> tuple[Finding, ...]:
        """Scan what this sync adds or changes; refuse it if the policy says block."""
        policy = effective_policy(
            self.settings.secret_scan,
            job.secret_scan,
            may_loosen=self.settings.secret_scan_request_may_loosen,
        )
        if policy is SecretScanPolicy.OFF:
            return ()
        prefix = job.path_prefix
        written = {
            rel: export[rel]
            for c in changes
            if c.status != "deleted"
            and _under(c.path, prefix)
            and (rel := _strip_prefix(c.path, prefix)) in export
        }
        findings = tuple(self.scanner.scan(written, prefix))
        if not findings:
            return ()
        if policy is SecretScanPolicy.WARN:
            log.warning(
                "pushing %d possible secret(s) in workspace %s (SECRET_SCAN=warn)",
                len(findings),
                job.workspace,
                extra={"secret_findings": [f.to_dict() for f in findings]},
            )
            return findings
        shown = "; ".join(f.describe() for f in findings[:MAX_LISTED_FINDINGS])
        more = len(findings) - MAX_LISTED_FINDINGS
        error = SecretDetected(
            f"Refusing to push: {len(findings)} possible secret(s) in what this sync would "
            f"add to the backup: {shown}{f'; and {more} more' if more > 0 else ''}. Nothing "
            "was pushed. Move the value into a Windmill secret variable or resource, or, for "
            f"a false positive, end that line with the comment '{ALLOWLIST_COMMENT}'."
        )
        error.response_extra = {"secret_findings": [f.to_dict() for f in findings]}
        raise error

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.settings.data_dir).free
        if free < self.settings.min_free_bytes:
            raise InsufficientStorage(
                f"Not enough free space in DATA_DIR ({free // 2**20} MiB free, "
                f"{self.settings.min_free_bytes // 2**20} MiB needed); nothing was changed"
            )

    def _fetch_tip_retrying(self, repo: GitRepo, deadline: Deadline) -> str | None:
        return with_retries(
            lambda: self._fetch_tip(repo),
            policy=self.settings.retry_policy,
            deadline=deadline,
            what="the Git fetch",
            on_retry=self.on_retry,
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


def success_message(result: SyncResult) -> str:
    if result.workspace == "*":
        return f"Successfully synced {len(result.workspaces)} workspaces to Git"
    return f"Successfully synced workspace '{result.workspace}' to Git"


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
        by = f" by {_one_line(found.username)}" if found else ""
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
    users = sorted({_one_line(authors[c.item].username) for c in changes if c.item in authors})
    lines += [f"Windmill-User: {user}" for user in users]
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _under(path: str, prefix: str) -> bool:
    return not prefix or path.startswith(prefix + "/")


def _strip_prefix(path: str, prefix: str) -> str:
    return path[len(prefix) + 1 :] if prefix else path


def _join(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix else path


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
