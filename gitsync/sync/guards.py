"""Refusals before anything is committed: a full disk, a mass deletion, a secret.

Each leaves the previous backup exactly as it was and says why, and what to
do about it.
"""

from __future__ import annotations

import logging
import shutil

from gitsync.config import SecretScanPolicy, Settings
from gitsync.errors import InsufficientStorage, MassDeletionRefused, SecretDetected
from gitsync.git.repo import Change, GitRepo
from gitsync.sync.job import SyncJob, in_prefix, strip_prefix
from gitsync.sync.scan import ALLOWLIST_COMMENT, Finding, SecretScanner, effective_policy
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


def scan_for_secrets(
    settings: Settings,
    scanner: SecretScanner,
    job: SyncJob,
    changes: list[Change],
    export: dict[str, str],
) -> tuple[Finding, ...]:
    """Scan what this sync adds or changes; refuse it if the policy says block."""
    policy = effective_policy(
        settings.secret_scan,
        job.secret_scan,
        may_loosen=settings.secret_scan_request_may_loosen,
    )
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
    findings = tuple(scanner.scan(written, prefix))
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
