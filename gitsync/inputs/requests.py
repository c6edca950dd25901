"""The bodies of ``POST /sync``, ``/restore`` and ``/history``, and ``GET /history``'s query:
parsed and validated before anything touches disk or network.

Validation is strict (see shared security notes, section c.6): these values
end up in Git requests and ``wmill`` invocations. Every rejection names the
field and the rule (fields.py), and never echoes the value back (it may be a token).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gitsync.backup.job import SyncJob
from gitsync.config import SecretScanPolicy
from gitsync.errors import RequestError
from gitsync.git.repo import Identity
from gitsync.git.transport import default_username
from gitsync.inputs.fields import (
    CONTROL_CHARS,
    EMAIL,
    ITEM_PATH,
    ITEM_PATH_RULE,
    PATH_PREFIX,
    WORKSPACE_ID,
    canonical_remote_url,
    check_token,
    describe_validation_error,
    is_item_path,
    is_valid_branch,
    path_patterns,
)
from gitsync.recovery.history import HistoryQuery
from gitsync.recovery.restore import RestoreJob
from gitsync.secrets import Secret
from gitsync.windmill.wmill import Scope

M = TypeVar("M", bound=BaseModel)

# The contract's required fields, in the order the error message lists them.
REQUIRED_FIELDS = ("windmill_token", "git_remote_url", "git_token")


class _GitRequest(BaseModel):
    """Fields shared by every request that reaches a repository with a token."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, strict=True)

    git_remote_url: str = Field(max_length=2048)
    git_token: SecretStr
    workspace: str = "admins"
    git_branch: str = "main"
    # Basic-auth username paired with git_token; the default depends on the host.
    git_username: str | None = None
    # Sub-directory of the repository for this workspace (several per repository).
    path_prefix: str = ""

    _git_token = field_validator("git_token")(check_token)

    @property
    def username(self) -> str:
        return self.git_username or default_username(self.git_remote_url)

    @field_validator("git_remote_url")
    @classmethod
    def _remote_url(cls, value: str, info: ValidationInfo) -> str:
        url = canonical_remote_url(value)
        allowed: frozenset[str] = (info.context or {}).get("allowed_hosts", frozenset())
        if allowed:
            netloc = urllib.parse.urlsplit(url).netloc
            if netloc not in allowed and netloc.split(":")[0] not in allowed:
                raise ValueError("names a host that is not in GIT_ALLOWED_HOSTS")
        return url

    @field_validator("git_branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not is_valid_branch(value):
            raise ValueError(
                "must be a plain branch name (letters, digits, '.', '_', '-', '/'; "
                "not starting with '-', no '..', not 'HEAD', no 'refs/' prefix)"
            )
        return value

    @field_validator("path_prefix")
    @classmethod
    def _path_prefix(cls, value: str) -> str:
        value = value.strip("/")
        if value and (
            len(value) > 200
            or not PATH_PREFIX.fullmatch(value)
            or any(part in (".", "..") or part.lower() == ".git" for part in value.split("/"))
        ):
            raise ValueError(
                "must be a relative directory like 'workspaces/prod' (letters, digits, "
                "'.', '_', '-', '/'; no '..')"
            )
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        if value == "*":  # every workspace the token can see
            return value
        if not WORKSPACE_ID.fullmatch(value):
            raise ValueError(
                "must be a Windmill workspace id: letters, digits, '-' and '_', "
                "at most 50 characters"
            )
        return value

    @field_validator("git_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._@+-]{1,100}", value):
            raise ValueError("must be 1 to 100 letters, digits or '._@+-'")
        return value


class _TargetRequest(_GitRequest):
    """Fields shared by every request that also reaches a Windmill workspace."""

    windmill_token: SecretStr
    # Accept deleting most of the backup or of the workspace (a brake is on by default).
    allow_mass_deletion: bool = False
    includes: tuple[str, ...] = ("f/**", "u/**")
    include_secrets: str = "skip"

    _windmill_token = field_validator("windmill_token")(check_token)
    _includes = field_validator("includes", mode="before")(path_patterns)

    @field_validator("include_secrets")
    @classmethod
    def _secrets(cls, value: str) -> str:
        if value == "plain":
            raise ValueError(
                "'plain' is refused: secret values are never written in clear; use 'skip' "
                "or 'encrypted' (Windmill's ciphertext, readable only by that workspace)"
            )
        if value not in ("skip", "encrypted"):
            raise ValueError("must be 'skip' or 'encrypted'")
        return value


class SyncRequest(_TargetRequest):
    git_user_name: str = "Windmill Git Sync"
    git_user_email: str = "windmill@example.com"
    # False: answer 202 with a job id at once instead of waiting for the sync.
    wait: bool = True
    # What the backup holds (defaults: the whole workspace, secrets excluded).
    excludes: tuple[str, ...] = ()
    include_schedules: bool = True
    include_triggers: bool = True
    include_groups: bool = True
    include_folders: bool = True
    include_resource_types: bool = True
    include_users: bool = False
    include_settings: bool = False
    # Narrows SECRET_SCAN for this sync (looser only where the operator allows it).
    secret_scan: Literal["hold", "block", "warn", "off"] | None = None

    _excludes = field_validator("excludes", mode="before")(path_patterns)

    def to_job(self) -> SyncJob:
        return SyncJob(
            workspace=self.workspace,
            remote_url=self.git_remote_url,
            branch=self.git_branch,
            windmill_token=Secret(self.windmill_token.get_secret_value()),
            git_token=Secret(self.git_token.get_secret_value()),
            author=Identity(self.git_user_name, self.git_user_email),
            git_username=self.git_username,
            allow_mass_deletion=self.allow_mass_deletion,
            path_prefix=self.path_prefix,
            secret_scan=SecretScanPolicy(self.secret_scan) if self.secret_scan else None,
            scope=Scope(
                includes=self.includes,
                excludes=self.excludes,
                include_schedules=self.include_schedules,
                include_triggers=self.include_triggers,
                include_groups=self.include_groups,
                include_folders=self.include_folders,
                include_resource_types=self.include_resource_types,
                include_users=self.include_users,
                include_settings=self.include_settings,
                secrets=self.include_secrets,
            ),
        )

    @field_validator("git_user_name")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if not 1 <= len(value) <= 100 or CONTROL_CHARS.search(value) or set("<>") & set(value):
            raise ValueError("must be 1 to 100 characters without control characters or '<', '>'")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("git_user_email")
    @classmethod
    def _user_email(cls, value: str) -> str:
        if len(value) > 254 or CONTROL_CHARS.search(value) or not EMAIL.fullmatch(value):
            raise ValueError("must be an email address like name@example.com")
        return value


class RestoreRequest(_TargetRequest):
    # The target is never implied: restoring into the wrong workspace is costly.
    workspace: str
    # Branch, tag or commit id; default the branch the backups go to.
    git_ref: str | None = None
    apply: bool = False
    allow_deletions: bool = False

    @field_validator("git_ref")
    @classmethod
    def _git_ref(cls, value: str | None) -> str | None:
        if value is not None and not (
            re.fullmatch(r"[0-9a-f]{7,40}", value) or is_valid_branch(value)
        ):
            raise ValueError("must be a branch, a tag or a commit id")
        return value

    def to_job(self) -> RestoreJob:
        if self.workspace == "*":
            raise RequestError("Invalid workspace: a restore needs one target workspace, not '*'")
        return RestoreJob(
            workspace=self.workspace,
            remote_url=self.git_remote_url,
            git_ref=self.git_ref or self.git_branch,
            windmill_token=Secret(self.windmill_token.get_secret_value()),
            git_token=Secret(self.git_token.get_secret_value()),
            git_username=self.username,
            path_prefix=self.path_prefix,
            includes=self.includes,
            include_secrets=self.include_secrets,
            apply=self.apply,
            allow_deletions=self.allow_deletions,
            allow_mass_deletion=self.allow_mass_deletion,
            branch=self.git_branch,
        )


class HistoryRequest(_GitRequest):
    """``POST /history``: the GET query, and a token to fetch the branch's older history."""

    workspace: str
    path: str

    @field_validator("path")
    @classmethod
    def _item_path(cls, value: str) -> str:
        if not is_item_path(value):
            raise ValueError(ITEM_PATH_RULE)
        return value

    def to_query(self) -> HistoryQuery:
        if self.workspace == "*":
            raise RequestError("Invalid workspace: a history names one workspace, not '*'")
        return HistoryQuery(
            workspace=self.workspace,
            remote_url=self.git_remote_url,
            branch=self.git_branch,
            path_prefix=self.path_prefix,
            item_path=self.path,
            git_token=Secret(self.git_token.get_secret_value()),
            git_username=self.username,
        )


def parse_sync_request(body: Any, allowed_hosts: frozenset[str] = frozenset()) -> SyncRequest:
    """Validate a decoded JSON body; raise :class:`RequestError` with a user-facing message."""
    return _parse(SyncRequest, REQUIRED_FIELDS, body, allowed_hosts)


def parse_restore_request(body: Any, allowed_hosts: frozenset[str] = frozenset()) -> RestoreRequest:
    return _parse(RestoreRequest, (*REQUIRED_FIELDS, "workspace"), body, allowed_hosts)


def parse_history_request(body: Any, allowed_hosts: frozenset[str] = frozenset()) -> HistoryRequest:
    required = ("git_remote_url", "git_token", "workspace", "path")
    return _parse(HistoryRequest, required, body, allowed_hosts)


def _parse(
    model: type[M], required: tuple[str, ...], body: Any, allowed_hosts: frozenset[str]
) -> M:
    if not isinstance(body, dict):
        raise RequestError("Request body must be a JSON object")
    missing = [f for f in required if body.get(f) in (None, "")]
    if missing:
        raise RequestError("Missing required fields: " + ", ".join(missing))
    try:
        return model.model_validate(body, context={"allowed_hosts": allowed_hosts})
    except ValidationError as exc:
        locations = [e["loc"] for e in exc.errors(include_input=False, include_url=False)]
        first = str(locations[0][0]) if locations and locations[0] else None
        raise RequestError(describe_validation_error(exc), field=first) from None


def parse_history_query(args: dict[str, str]) -> HistoryQuery:
    """The query of GET /history (and the history command), every problem reported at once."""
    if "git_token" in args:
        # A query string is logged by proxies and kept in shell histories.
        raise RequestError(
            "git_token is not accepted in a query string; send it in the JSON body of POST /history"
        )
    problems = []
    missing = [k for k in ("workspace", "git_remote_url", "path") if not args.get(k)]
    if missing:
        raise RequestError("Missing required fields: " + ", ".join(missing))
    try:
        remote = canonical_remote_url(args["git_remote_url"])
    except ValueError as exc:
        problems.append(f"Invalid git_remote_url: {exc}")
        remote = ""
    branch = args.get("git_branch") or "main"
    if not is_valid_branch(branch):
        problems.append("Invalid git_branch: must be a plain branch name")
    prefix = (args.get("path_prefix") or "").strip("/")
    if prefix and (".." in prefix.split("/") or not ITEM_PATH.fullmatch(prefix)):
        problems.append("Invalid path_prefix: must be a relative directory")
    path = args["path"]
    if not is_item_path(path):
        problems.append(f"Invalid path: {ITEM_PATH_RULE}")
    if not WORKSPACE_ID.fullmatch(args["workspace"]):
        problems.append("Invalid workspace: must be a Windmill workspace id")
    if problems:
        raise RequestError("; ".join(problems))
    return HistoryQuery(args["workspace"], remote, branch, prefix, path)
