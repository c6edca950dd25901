"""What one sync is: its request (SyncJob), its run (Run), its answer (SyncResult), its target.

Plain values, shared by the steps in ``steps`` and the modules beside them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from gitsync.config import SecretScanPolicy
from gitsync.git.repo import Change, Identity
from gitsync.git.transport import default_username
from gitsync.secrets import Redactor, Secret
from gitsync.secretscan.scan import Finding, HeldItem
from gitsync.windmill.coverage import Coverage, Gap
from gitsync.windmill.items import ItemChange
from gitsync.windmill.version import Versions
from gitsync.windmill.wmill import Scope

# Called with a step's name as a sync goes (the job record's phase).
Progress = Callable[[str], None]
# Changed paths listed in a commit body and a response; counts are always whole.
MAX_LISTED_CHANGES = 500
# Held items named in a message; the answer's list holds them all.
MAX_LISTED_HELD = 20


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
    # Secrets found (pushed anyway under SECRET_SCAN=warn); never their values.
    secret_findings: tuple[Finding, ...] = ()
    # Items kept out of this sync for their findings (SECRET_SCAN=hold).
    held: tuple[HeldItem, ...] = ()
    # "skipped" when nothing the CLI reads had changed (skip.py); why it ran otherwise.
    pull: str = "ran"
    pull_reason: str | None = None
    # What Windmill has that the backup does not (this pull's, or the last
    # pull's when skipped); None when not known.
    coverage: Coverage | None = None
    # Windmill's version beside the pinned CLI's.
    versions: Versions | None = None

    @property
    def all_held(self) -> tuple[HeldItem, ...]:
        return self.held + tuple(h for r in self.workspaces for h in r.all_held)

    def count(self, status: str) -> int:
        own = sum(1 for c in self.changes if c.status == status)
        return own + sum(r.count(status) for r in self.workspaces)

    def overall_coverage(self) -> Coverage | None:
        """The coverage; with workspace "*", every workspace's gaps, paths as ``ws:path``."""
        if self.workspace != "*":
            return self.coverage
        known = [(r.workspace, r.coverage) for r in self.workspaces if r.coverage is not None]
        if not known:
            return None
        return Coverage(
            not_backed_up=tuple(
                Gap(g.kind, f"{ws}:{g.path}", g.reason) for ws, c in known for g in c.not_backed_up
            ),
            exported=sum(c.exported for _, c in known),
            backed_up=sum(c.backed_up for _, c in known),
        )

    def to_dict(self) -> dict[str, object]:
        common: dict[str, object] = {
            "workspace": self.workspace,
            "remote": self.remote_url,
            "branch": self.branch,
            "changed": self.changed,
            "commit": self.commit,
            "added": self.count("added"),
            "modified": self.count("modified"),
            "deleted": self.count("deleted"),
            # Never empty when the backup is incomplete: see success_message.
            "held_items": [h.to_dict() for h in self.held],
        }
        if self.workspace == "*":
            own: dict[str, object] = {
                "files": [],
                "workspaces": [r.to_dict() for r in self.workspaces],
                "not_backed_up": coverage_keys(self.overall_coverage())["not_backed_up"],
            }
        else:
            own = {
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
                **coverage_keys(self.coverage),
            }
        if self.versions is not None:
            own["windmill"] = self.versions.to_dict()
        return {**common, **own, "duration_seconds": round(self.duration_seconds, 3)}


def coverage_keys(coverage: Coverage | None) -> dict[str, object]:
    """The answer's coverage keys; ``not_backed_up`` is None when the coverage is not known.

    Items held by the secret scan are the answer's ``held`` (SyncResult.held).
    """
    if coverage is None:
        return {"not_backed_up": None}
    data = coverage.to_dict()
    return {
        "not_backed_up": data["not_backed_up"],
        "scope_excludes": data["scope_excludes"],
        "skipped_by_policy": data["skipped_by_policy"],
        "coverage": {"exported": data["exported"], "backed_up": data["backed_up"]},
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


def success_message(result: SyncResult) -> str:
    held = result.all_held
    if held:
        what = (
            f"{len(result.workspaces)} workspaces"
            if result.workspace == "*"
            else (f"workspace '{result.workspace}'")
        )
        more = len(held) - MAX_LISTED_HELD
        return (
            f"Synced {what} to Git except {len(held)} item(s) held back for possible "
            f"secrets: {'; '.join(h.describe() for h in held[:MAX_LISTED_HELD])}"
            f"{f'; and {more} more' if more > 0 else ''}. "
            "Move each value into a Windmill secret variable or resource (or, for a false "
            "positive, end its line with 'pragma: allowlist secret'); the next sync then "
            "backs the item up."
        )
    if result.workspace == "*":
        return f"Successfully synced {len(result.workspaces)} workspaces to Git"
    return f"Successfully synced workspace '{result.workspace}' to Git"


def in_prefix(path: str, prefix: str) -> bool:
    return not prefix or path.startswith(prefix + "/")


def strip_prefix(path: str, prefix: str) -> str:
    return path[len(prefix) + 1 :] if prefix else path


def join_prefix(prefix: str, path: str) -> str:
    return f"{prefix}/{path}" if prefix else path
