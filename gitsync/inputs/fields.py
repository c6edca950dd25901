"""What each value of a request may hold: one rule per kind of field, shared by the models.

Rejections name the rule, never the value (it may be a token).
"""

from __future__ import annotations

import re
import urllib.parse

from pydantic import SecretStr, ValidationError

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"^[\x21-\x7e]{1,512}$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")
_URL_PATH = re.compile(r"^/[A-Za-z0-9._~/-]+$")
# Branch names: a strict allow-list, then git's own check-ref-format rules.
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
WORKSPACE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,49}$")
EMAIL = re.compile(r"^[^\s<>@]+@[^\s<>@]+$")
PATH_PREFIX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
_PATTERN = re.compile(r"[A-Za-z0-9._*?/-]{1,200}")
ITEM_PATH = re.compile(r"[A-Za-z0-9_@][A-Za-z0-9_.@/-]{0,299}")
ITEM_PATH_RULE = "must be an item path like f/team/my_flow"


def check_token(value: SecretStr) -> SecretStr:
    if not _TOKEN.fullmatch(value.get_secret_value()):
        raise ValueError("must be 1 to 512 printable ASCII characters without spaces")
    return value


def path_patterns(value: object) -> object:
    if isinstance(value, list):
        if len(value) > 100 or not all(isinstance(p, str) and _PATTERN.fullmatch(p) for p in value):
            raise ValueError(
                "must be a list of at most 100 path patterns like 'f/team/**' "
                "(letters, digits, '.', '_', '-', '/', '*', '?')"
            )
        return tuple(value)
    raise ValueError("must be a list of path patterns")


def canonical_remote_url(value: str) -> str:
    """Check an HTTPS remote URL; return it canonical (lower-case host, no trailing slash)."""
    if not value or value.startswith("-") or CONTROL_CHARS.search(value) or re.search(r"\s", value):
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


def is_item_path(value: str) -> bool:
    return bool(ITEM_PATH.fullmatch(value)) and ".." not in value.split("/")


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
