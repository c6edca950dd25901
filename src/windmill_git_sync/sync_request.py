"""The ``POST /sync`` body: parsed and validated before anything touches disk or network.

Validation is strict (see shared security notes, section c.6): these values
end up in ``git`` and ``wmill`` invocations. Every rejection names the field
and the rule, and never echoes the value back (it may be a token).
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from .errors import RequestError
from .git import Identity
from .secrets import Secret
from .sync import SyncJob
from .wmill import Scope

# The contract's required fields, in the order the error message lists them.
REQUIRED_FIELDS = ("windmill_token", "git_remote_url", "git_token")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~/-]+$")
# Branch names: a strict allow-list, then git's own check-ref-format rules.
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_WORKSPACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,49}$")
_EMAIL = re.compile(r"^[^\s<>@]+@[^\s<>@]+$")
_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_PATTERN = re.compile(r"[A-Za-z0-9._*?/-]{1,200}")


def _check_token(value: SecretStr) -> SecretStr:
    if not _TOKEN.fullmatch(value.get_secret_value()):
        raise ValueError("must be 1 to 512 printable ASCII characters without spaces")
    return value


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, strict=True)

    windmill_token: SecretStr
    git_remote_url: str = Field(max_length=2048)
    git_token: SecretStr
    workspace: str = "admins"
    git_branch: str = "main"
    git_user_name: str = "Windmill Git Sync"
    git_user_email: str = "windmill@example.com"
    # Basic-auth username paired with git_token; the default depends on the host.
    git_username: str | None = None
    # Accept a pull that deletes most of the backup (the brake is on by default).
    allow_mass_deletion: bool = False
    # False: answer 202 with a job id at once instead of waiting for the sync.
    wait: bool = True
    # Sub-directory of the repository for this workspace (several per repository).
    path_prefix: str = ""
    # What the backup holds (defaults: the whole workspace, secrets excluded).
    includes: tuple[str, ...] = ("f/**", "u/**")
    excludes: tuple[str, ...] = ()
    include_schedules: bool = True
    include_triggers: bool = True
    include_groups: bool = True
    include_folders: bool = True
    include_resource_types: bool = True
    include_users: bool = False
    include_settings: bool = False
    include_secrets: str = "skip"

    _tokens = field_validator("windmill_token", "git_token")(_check_token)

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
            or not _PREFIX.fullmatch(value)
            or any(part in (".", "..") or part.lower() == ".git" for part in value.split("/"))
        ):
            raise ValueError(
                "must be a relative directory like 'workspaces/prod' (letters, digits, "
                "'.', '_', '-', '/'; no '..')"
            )
        return value

    @field_validator("includes", "excludes", mode="before")
    @classmethod
    def _patterns(cls, value: object) -> object:
        if isinstance(value, list):
            if len(value) > 100 or not all(
                isinstance(p, str) and _PATTERN.fullmatch(p) for p in value
            ):
                raise ValueError(
                    "must be a list of at most 100 path patterns like 'f/team/**' "
                    "(letters, digits, '.', '_', '-', '/', '*', '?')"
                )
            return tuple(value)
        raise ValueError("must be a list of path patterns")

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

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        if value == "*":  # every workspace the token can see
            return value
        if not _WORKSPACE.fullmatch(value):
            raise ValueError(
                "must be a Windmill workspace id: letters, digits, '-' and '_', "
                "at most 50 characters"
            )
        return value

    @field_validator("git_user_name")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if not 1 <= len(value) <= 100 or _CONTROL.search(value) or set("<>") & set(value):
            raise ValueError("must be 1 to 100 characters without control characters or '<', '>'")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("git_user_email")
    @classmethod
    def _user_email(cls, value: str) -> str:
        if len(value) > 254 or _CONTROL.search(value) or not _EMAIL.fullmatch(value):
            raise ValueError("must be an email address like name@example.com")
        return value

    @field_validator("git_username")
    @classmethod
    def _username(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._@+-]{1,100}", value):
            raise ValueError("must be 1 to 100 letters, digits or '._@+-'")
        return value


def canonical_remote_url(value: str) -> str:
    """Check an HTTPS remote URL; return it canonical (lower-case host, no trailing slash)."""
    if not value or value.startswith("-") or _CONTROL.search(value) or re.search(r"\s", value):
        raise ValueError("must be an https:// URL without spaces or control characters")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme.lower() != "https":
        raise ValueError("must be an https:// URL (other transports are not allowed)")
    if "@" in parts.netloc:
        raise ValueError("must not contain credentials; send the token in git_token")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("must not contain a query string or fragment")
    host = (parts.hostname or "").lower()
    if not _HOST.fullmatch(host):
        raise ValueError("must name a valid host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    path = parts.path.rstrip("/")
    if not _URL_PATH.fullmatch(path) or ".." in path or "//" in path:
        raise ValueError("must have a repository path of letters, digits and '._~/-'")
    netloc = host if port in (None, 443) else f"{host}:{port}"
    return f"https://{netloc}{path}"


def is_valid_branch(name: str) -> bool:
    """git check-ref-format --branch, narrowed to an allow-list (security notes T17)."""
    if not _BRANCH.fullmatch(name) or name in ("HEAD", "@") or name.startswith("refs/"):
        return False
    if ".." in name or "//" in name or "@{" in name or name.endswith(("/", ".")):
        return False
    return not any(part.startswith(".") or part.endswith(".lock") for part in name.split("/"))


def parse_sync_request(body: Any, allowed_hosts: frozenset[str] = frozenset()) -> SyncRequest:
    """Validate a decoded JSON body; raise :class:`RequestError` with a user-facing message."""
    if not isinstance(body, dict):
        raise RequestError("Request body must be a JSON object")
    missing = [f for f in REQUIRED_FIELDS if body.get(f) in (None, "")]
    if missing:
        raise RequestError("Missing required fields: " + ", ".join(missing))
    try:
        return SyncRequest.model_validate(body, context={"allowed_hosts": allowed_hosts})
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Field names and rules only: pydantic's own text can echo a token."""
    problems: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "body"
        kind = error["type"]
        if kind == "extra_forbidden":
            problems.append(f"Unknown field: {field}")
        elif kind == "missing":
            problems.append(f"Missing required field: {field}")
        elif kind == "value_error":
            problems.append(f"Invalid {field}: {error['ctx']['error']}")
        elif kind.startswith("string") and "too_long" in kind:
            problems.append(f"Invalid {field}: too long")
        elif kind in ("string_type", "bool_type", "int_type", "list_type", "dict_type"):
            problems.append(f"Invalid {field}: must be a {kind.removesuffix('_type')}")
        else:
            problems.append(f"Invalid {field}")
    return "; ".join(problems)
