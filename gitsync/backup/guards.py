"""Refusals before anything is committed: a full disk, a mass deletion, a secret.

Each leaves the previous backup exactly as it was and says why, and what to
do about it; a secret under the default policy (hold) keeps back only the
items that hold one, and the rest of the sync goes on.
"""

from __future__ import annotations

import logging
import shutil

from gitsync.backup import commits
from gitsync.backup.job import SyncJob, in_prefix, join_prefix, strip_prefix
from gitsync.config import SecretScanPolicy, Settings
from gitsync.deadline import Deadline
from gitsync.errors import InsufficientStorage, MassDeletionRefused, SecretDetected
from gitsync.git.repo import Change, GitRepo
from gitsync.secretscan.scan import (
    ALLOWLIST_COMMENT,
    Finding,
    HeldItem,
    SecretScanner,
    effective_policy,
)
from gitsync.windmill import mirror

log = logging.getLogger(__name__)

# Files regenerated on every pull: never counted as backed-up content.
_GENERATED = frozenset({"wmill.yaml", "wmill-lock.yaml"})
# Secret findings named in an error message; the answer's list holds them all.
MAX_LISTED_FINDINGS = 20


def check_free_space(settings: Settings) -> None:
    free = shutil.disk_usage(settings.data_dir).free
    if free < settings.min_free_bytes:
        raise InsufficientStorage(
            f"Not enough free space in DATA_DIR ({free // 2**20} MiB free, "
            f"{settings.min_free_bytes // 2**20} MiB needed); nothing was changed"
        )


def check_mass_deletion(
    settings: Settings, repo: GitRepo, base: str | None, changes: list[Change], prefix: str
) -> None:
    def counted(path: str) -> bool:
        if not in_prefix(path, prefix):
            return False
        rel = strip_prefix(path, prefix)
        return mirror.is_managed(rel) and rel not in _GENERATED

    deleted = [c for c in changes if c.status == "deleted" and counted(c.path)]
    if not deleted:
        return
    backed_up = [p for p in repo.list_files(base) if counted(p)]
    share = len(deleted) / max(len(backed_up), 1)
    if len(deleted) == len(backed_up) or share > settings.mass_deletion_share:
        raise MassDeletionRefused(
            f"Refusing to push: this sync would delete {len(deleted)} of the "
            f"{len(backed_up)} Windmill files in the backup ({share:.0%}; the limit is "
            f"{settings.mass_deletion_share:.0%}). The previous backup is unchanged. "
            "If the workspace really lost these items (check the workspace id and that "
            "the token can see them), repeat the request with "
            '"allow_mass_deletion": true.'
        )


def secret_policy(settings: Settings, job: SyncJob) -> SecretScanPolicy:
    """The operator's policy, narrowed (or loosened, if allowed) by the request."""
    return effective_policy(
        settings.secret_scan,
        job.secret_scan,
        may_loosen=settings.secret_scan_request_may_loosen,
    )


def scan_for_secrets(
    settings: Settings,
    scanner: SecretScanner,
    job: SyncJob,
    changes: list[Change],
    export: dict[str, str],
    deadline: Deadline,
) -> tuple[Finding, ...]:
    """Scan what this sync adds or changes; refuse it if the policy says block."""
    policy = secret_policy(settings, job)
    if policy is SecretScanPolicy.OFF:
        return ()
    prefix = job.path_prefix
    written = {
        rel: export[rel]
        for c in changes
        if c.status != "deleted"
        and in_prefix(c.path, prefix)
        and (rel := strip_prefix(c.path, prefix)) in export
    }
    findings = tuple(scanner.scan(written, prefix, deadline))
    if not findings or policy is SecretScanPolicy.HOLD:
        return findings
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
    raise SecretDetected(
        f"Refusing to push: {len(findings)} possible secret(s) in what this sync would "
        f"add to the backup: {shown}{f'; and {more} more' if more > 0 else ''}. Nothing "
        "was pushed. Move the value into a Windmill secret variable or resource, or, for "
        f"a false positive, end that line with the comment '{ALLOWLIST_COMMENT}'.",
        [f.to_dict() for f in findings],
    )


def hold_back(
    repo: GitRepo,
    base_tree: str,
    tree: str,
    changes: list[Change],
    findings: tuple[Finding, ...],
    prefix: str,
) -> tuple[str, tuple[HeldItem, ...]]:
    """``tree`` with every item that has a finding as ``base_tree`` has it.

    An item is held whole: all the files this sync changes of it (both
    names of a rename) keep their previous blobs, or stay out if they are
    new, so nothing of its new content is in the tree, and so in no object
    the push sends.
    """
    held_refs: dict[str, list[Finding]] = {}
    for finding in findings:
        held_refs.setdefault(finding.item, []).append(finding)
    files: dict[str, set[str]] = {item: set() for item in held_refs}
    for change in commits.item_changes(changes, prefix):
        name = f"{change.item.kind} {change.item.path}"
        if name in files:
            files[name].update(join_prefix(prefix, f) for f in change.files)
    for item in files:
        if not files[item]:  # a file of no item (the lock file, say): itself
            files[item] = {join_prefix(prefix, item)}
    before = repo.ls_tree(base_tree)
    updates = {path: before.get(path) for paths in files.values() for path in paths}
    held = tuple(
        HeldItem(
            item,
            tuple(sorted(files[item])),
            previous=any(path in before for path in files[item]),
            findings=tuple(found),
        )
        for item, found in sorted(held_refs.items())
    )
    for one in held:
        log.warning(
            "holding %s back: possible secret(s) in it; the backup keeps %s",
            one.item,
            "its previous version" if one.previous else "no copy",
            extra={"secret_findings": [f.to_dict() for f in one.findings]},
        )
    return repo.tree_with(tree, updates), held
