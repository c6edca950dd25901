"""Typed errors, each carrying a message that is safe to show a user.

Every message is written for the person operating the service: it says what
failed and, where possible, what to do. No message ever contains a secret;
text captured from child processes is redacted before it gets here.

The errors say what happened in the core's own terms (which field, which
findings, when to come back, which job); how each becomes an answer is the
caller's business: one table in ``web/errors.py`` maps them to HTTP
statuses, and ``cli.py`` to exit codes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class WindmillGitSyncError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``str()`` is for people."""

    code = "internal_error"

    def __init__(self, message: str, *, detail: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # Extra diagnostic text (already redacted), logged but not returned.
        self.detail = detail
        # Worth retrying: a dropped connection or a 5xx, not a refusal.
        self.transient = transient
        self.attempts = 1
        # The accepted job this error ended, if it ended one (the runner says).
        self.job_id: str | None = None

    def __str__(self) -> str:
        return self.message

    def facts(self) -> dict[str, object]:
        """What else the error knows, as plain data for an answer or a job record; no secret."""
        return {}


class ConfigError(WindmillGitSyncError):
    """The service's own configuration (environment) is invalid."""

    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid configuration: " + "; ".join(problems))


class RequestError(WindmillGitSyncError):
    """The caller sent something we cannot act on (never retried)."""

    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        # The request field at fault, when one is (the message names it too).
        self.field = field


class Unauthorized(RequestError):
    code = "unauthorized"


class LengthRequired(RequestError):
    code = "length_required"


class BodyTooLarge(RequestError):
    code = "body_too_large"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


class NotFound(RequestError):
    code = "not_found"


class SyncError(WindmillGitSyncError):
    """A sync failed for a reason outside the caller's request."""

    code = "sync_failed"


class CommandError(SyncError):
    """A child process exited with a code its caller did not expect."""

    code = "command_failed"

    def __init__(self, step: str, returncode: int, stdout: str, stderr: str) -> None:
        self.step = step
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{step} failed with exit code {returncode}", detail=_tail(stderr or stdout)
        )


class Refused(SyncError):
    """The sync could run but must not: nothing was pushed, and retrying will not help."""


class MassDeletionRefused(Refused):
    """The pull would delete most of the backup; refused unless the caller insists."""

    code = "mass_deletion_refused"


class SecretDetected(Refused):
    """Files the sync would add hold secrets; the answer lists where, never what."""

    code = "secret_detected"

    def __init__(self, message: str, findings: Sequence[Mapping[str, object]]) -> None:
        super().__init__(message)
        # Item, file, line and detector of each finding; never the value.
        self.findings = tuple(findings)

    def facts(self) -> dict[str, object]:
        return {"secret_findings": [dict(f) for f in self.findings]}


class WorkspacesFailed(SyncError):
    """A ``"workspace": "*"`` sync in which some workspaces failed; the others were backed up."""

    def __init__(self, message: str, outcomes: Sequence[Mapping[str, object]]) -> None:
        super().__init__(message)
        # One per workspace: its result with success true, or its error.
        self.outcomes = tuple(outcomes)

    def facts(self) -> dict[str, object]:
        return {"workspaces": [dict(o) for o in self.outcomes]}


class RestoreStopped(SyncError):
    """A restore the CLI stopped part-way: what was applied stays applied."""

    def __init__(
        self,
        message: str,
        *,
        applied: Sequence[Mapping[str, str]],
        not_applied: Sequence[Mapping[str, str]],
        items_applied: Sequence[Mapping[str, str]],
        detail: str | None = None,
    ) -> None:
        super().__init__(message, detail=detail)
        self.applied = tuple(applied)
        self.not_applied = tuple(not_applied)
        self.items_applied = tuple(items_applied)

    def facts(self) -> dict[str, object]:
        return {
            "applied": [dict(c) for c in self.applied],
            "not_applied": [dict(c) for c in self.not_applied],
            "items_applied": [dict(c) for c in self.items_applied],
        }


class InsufficientStorage(SyncError):
    code = "insufficient_storage"


class Busy(SyncError):
    """Too many syncs queued; the caller should come back later."""

    code = "busy"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Busy):
    code = "shutting_down"


class JobStoreUnavailable(Busy):
    """The job history (SQLite in DATA_DIR) cannot be written: the disk is full or read-only."""

    code = "job_store_unavailable"


class SyncTimeout(SyncError):
    code = "timeout"

    def __init__(self, step: str, seconds: float) -> None:
        self.step = step
        self.seconds = seconds
        super().__init__(f"Timed out after {seconds:g} s during {step}")


class WindmillError(SyncError):
    code = "windmill_failed"


class WindmillAuthError(WindmillError):
    code = "windmill_auth_failed"


class NoWorkspaces(WindmillError):
    """A ``"workspace": "*"`` sync whose token lists no workspace: nothing was backed up."""

    code = "no_workspaces"


class WindmillUpstreamError(WindmillError):
    """Windmill could not be asked, or its answer could not be read to the end.

    ``answered``: Windmill did answer, but the answer was broken (a truncated
    body, a malformed status line or header); otherwise no answer came at all
    (refused, dropped, timed out).
    """

    def __init__(self, message: str, *, answered: bool, detail: str | None = None) -> None:
        super().__init__(message, detail=detail, transient=True)
        self.answered = answered


class GitError(SyncError):
    code = "git_failed"


class GitAuthError(GitError):
    code = "git_auth_failed"


class GitPushRejected(GitError):
    """The Git host refused the push by a rule of its own (push protection, a hook)."""

    code = "git_push_rejected"


class UnsafeExportError(SyncError):
    """The export contains something we refuse to commit (a symlink, a path escape)."""

    code = "unsafe_export"


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]
