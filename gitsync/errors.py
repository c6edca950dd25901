"""Typed errors, each carrying a message that is safe to show a user.

Every message is written for the person operating the service: it says what
failed and, where possible, what to do. No message ever contains a secret;
text captured from child processes is redacted before it gets here.
"""

from __future__ import annotations


class WindmillGitSyncError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``str()`` is for people."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, detail: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        # Extra diagnostic text (already redacted), logged but not returned.
        self.detail = detail
        # Worth retrying: a dropped connection or a 5xx, not a refusal.
        self.transient = transient
        self.attempts = 1
        # More fields for the HTTP answer (never secrets).
        self.response_extra: dict[str, object] = {}

    def __str__(self) -> str:
        return self.message


class ConfigError(WindmillGitSyncError):
    """The service's own configuration (environment) is invalid."""

    code = "config_error"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("Invalid configuration: " + "; ".join(problems))


class RequestError(WindmillGitSyncError):
    """The caller sent something we cannot act on (a 4xx, never retried)."""

    code = "bad_request"
    http_status = 400


class Unauthorized(RequestError):
    code = "unauthorized"
    http_status = 401


class LengthRequired(RequestError):
    code = "length_required"
    http_status = 411


class BodyTooLarge(RequestError):
    code = "body_too_large"
    http_status = 413


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"
    http_status = 415


class NotFound(RequestError):
    code = "not_found"
    http_status = 404


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
    http_status = 409


class SecretDetected(Refused):
    """Files the sync would add hold secrets; the answer lists where, never what."""

    code = "secret_detected"
    http_status = 422


class InsufficientStorage(SyncError):
    code = "insufficient_storage"
    http_status = 507


class Busy(SyncError):
    """Too many syncs queued; the caller should come back later."""

    code = "busy"
    http_status = 503

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
    http_status = 422


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
