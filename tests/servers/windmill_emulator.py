"""An in-process emulator of the Windmill HTTP API, as far as the pinned `wmill` CLI uses it.

The contract is /work/shared/docs/windmill-protocol.md (referred to as "the spec", with its
section numbers): what `wmill sync pull` and `wmill sync push` of windmill-cli 1.819.0 send and
expect, and the byte layout of the workspace archive the real server builds in
`workspaces_export.rs`. Only the standard library is used, so the emulator runs anywhere the
tests run.

Model: a `Workspace` holds items in *server form*: for each item the JSON object the server
exports (§4.1), kept apart from the server-side metadata that the archive never carries
(who edited it and when, the deployment message, the script hash, the archived flag). The
per-kind GET endpoints and the listing endpoints put the two back together.

Usage::

    with WindmillEmulator() as em:              # 127.0.0.1, a free port
        em.add_token("tok")                     # admin, valid on every workspace
        ws = em.workspace("demo").seed_basic()  # get-or-create, then fill
        em.set_fault("tarball", "500", workspace="demo")
        ...                                     # run `wmill` against em.base_url
        em.write_requests()                     # every non-GET call the CLI made

Fault endpoints are route names, the `endpoint` of each RequestRecord; `endpoints()` lists
them. Pull uses "whoami" (GET /api/users/whoami), "ws_whoami" (the workspace one, tried after
a 401 on "whoami"), "list_ws_specific", "file_ext_map", "tarball" and "shared_ui"; push adds
"version", "workspaces_users", "<kind>/get", "<kind>/create" (kind: scripts, flows, apps,
resources, resource_types, variables, folders, schedules, triggers, groups), and so on.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import random
import re
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

CLI_VERSION = "1.819.0"
SERVER_VERSION_TEXT = f"CE v{CLI_VERSION}"
JsonObj = dict[str, Any]

# Server-side script extension by language (§4.1). bun and deno depend on `default_ts`.
_SCRIPT_EXT: dict[str, str] = {
    "python3": "py",
    "go": "go",
    "bash": "sh",
    "powershell": "ps1",
    "postgresql": "pg.sql",
    "mysql": "my.sql",
    "bigquery": "bq.sql",
    "snowflake": "sf.sql",
    "mssql": "ms.sql",
    "duckdb": "duckdb.sql",
    "oracledb": "odb.sql",
    "graphql": "gql",
    "nativets": "fetch.ts",
    "php": "php",
    "rust": "rs",
    "ansible": "playbook.yml",
    "csharp": "cs",
    "nu": "nu",
    "java": "java",
    "ruby": "rb",
    "rlang": "r",
    "dbt": "dbt.yaml",
}

# Keys `to_string_without_metadata` strips from every exported object (§4.1).
_METADATA_KEYS = frozenset(
    {
        "workspace_id",
        "path",
        "name",
        "versions",
        "id",
        "created_at",
        "updated_at",
        "created_by",
        "updated_by",
        "edited_at",
        "edited_by",
        "permissioned_as",
        "archived",
        "error",
        "last_server_ping",
        "server_id",
        "raw_app",
    }
)

TRIGGER_KINDS = (
    "http",
    "websocket",
    "kafka",
    "nats",
    "postgres",
    "mqtt",
    "amqp",
    "sqs",
    "gcp",
    "azure",
    "email",
)

# Item kinds of the model. Triggers are stored per trigger kind ("http_trigger", ...).
KINDS = (
    "folder",
    "script",
    "flow",
    "app",
    "resource",
    "resource_type",
    "variable",
    "schedule",
    *(f"{k}_trigger" for k in TRIGGER_KINDS),
    "user",
    "group",
    "dependency",
)

# Logical clock origin: timestamps are deterministic and strictly increasing.
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

# Workspace dependency file names by language (§4.1 entry 9).
_DEPENDENCY_FILES = {
    "python3": "requirements.in",
    "bun": "package.json",
    "php": "composer.json",
    "go": "go.mod",
    "deno": "modules.json",
}


def script_extension(language: str, default_ts: str = "bun") -> str:
    """File extension the server gives a standalone script in the archive."""
    if language == "deno":
        return "deno.ts" if default_ts == "bun" else "ts"
    if language in ("bun", "bunnative"):
        return "ts" if default_ts == "bun" else "bun.ts"
    return _SCRIPT_EXT.get(language, "txt")


def pretty_json(value: Any) -> bytes:
    """`serde_json::to_string_pretty`: 2-space indent, no trailing newline, UTF-8 unescaped."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


def strip_metadata(obj: JsonObj) -> JsonObj:
    return {k: v for k, v in obj.items() if k not in _METADATA_KEYS}


# --- secrets ------------------------------------------------------------------------------

_CIPHER_MAGIC = b"wmemu1:"


def _keystream(key: str, n: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{key}:{counter}".encode()).digest()
        counter += 1
    return out[:n]


def encrypt_secret(key: str, plain: str) -> str:
    """Deterministic stand-in for the workspace-key encryption: base64 of magic + xor stream.

    Deterministic so that two exports of the same workspace are byte-identical, like the real
    server's stored ciphertext.
    """
    data = _CIPHER_MAGIC + plain.encode()
    stream = _keystream(key, len(data))
    return base64.b64encode(bytes(a ^ b for a, b in zip(data, stream, strict=True))).decode()


def decrypt_secret(key: str, cipher: str) -> str:
    """Inverse of `encrypt_secret`; ValueError when the value is not our ciphertext.

    A plaintext value pushed with `already_encrypted=true` lands here (§9.4) and fails, as on
    the real server.
    """
    try:
        raw = base64.b64decode(cipher.encode(), validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("value is not base64 ciphertext") from exc
    plain = bytes(a ^ b for a, b in zip(raw, _keystream(key, len(raw)), strict=True))
    if not plain.startswith(_CIPHER_MAGIC):
        raise ValueError("value was not encrypted with this workspace key")
    return plain[len(_CIPHER_MAGIC) :].decode()


# --- errors -------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered the way `windmill_common::error::Error::into_response` does (§1.3)."""

    PREFIX: ClassVar[dict[int, str]] = {
        400: "Bad request",
        401: "Not authorized",
        403: "Permission denied",
        404: "Not found",
        500: "Internal",
    }

    def __init__(self, status: int, message: str, *, prefix: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = f"{prefix or self.PREFIX.get(status, 'Internal')}: {message}"


def not_found(what: str) -> ApiError:
    return ApiError(404, what)


# --- the model ----------------------------------------------------------------------------


@dataclass
class ItemMeta:
    """Server-side facts about an item that the archive does not carry."""

    created_by: str = "admin"
    created_at: str = ""
    edited_by: str = "admin"
    edited_at: str = ""
    deployment_message: str | None = None
    archived: bool = False
    hash: str | None = None  # scripts: 16 hex digits
    version_id: int = 0  # flows and apps: a version counter, like flow_version.id


@dataclass
class Version:
    """One entry of an item's history (scripts: one per hash; flows and apps: one per save)."""

    id: str
    created_by: str
    created_at: str
    deployment_message: str | None


@dataclass
class Item:
    data: JsonObj  # the exported object (scripts: metadata fields plus content and language)
    meta: ItemMeta
    history: list[Version] = field(default_factory=list)


@dataclass
class TokenInfo:
    token: str
    username: str
    email: str
    name: str
    is_admin: bool
    super_admin: bool
    workspaces: frozenset[str] | None

    def can_see(self, workspace_id: str) -> bool:
        return self.workspaces is None or workspace_id in self.workspaces


def _kind_key(kind: str) -> str:
    kind = kind.replace("-", "_")
    aliases = {
        "resource_types": "resource_type",
        "scripts": "script",
        "flows": "flow",
        "apps": "app",
        "resources": "resource",
        "variables": "variable",
        "folders": "folder",
        "schedules": "schedule",
        "users": "user",
        "groups": "group",
        "dependencies": "dependency",
    }
    kind = aliases.get(kind, kind)
    if kind not in KINDS and kind != "trigger":
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    return kind


class Workspace:
    """One workspace: items in server form plus metadata. All methods are thread-safe."""

    def __init__(
        self, workspace_id: str, name: str | None = None, lock: threading.RLock | None = None
    ) -> None:
        self.id = workspace_id
        self.name = name or workspace_id
        self._lock = lock or threading.RLock()
        self.items: dict[str, dict[str, Item]] = {k: {} for k in KINDS}
        self.settings: JsonObj = {}
        self.encryption_key = hashlib.sha256(f"wmemu-key:{workspace_id}".encode()).hexdigest()
        self.ws_specific: list[JsonObj] = []  # list_ws_specific answer
        self.shared_ui: dict[str, str] = {}  # shared_ui/get files
        # Archive entries of kinds the model does not know (a newer server's:
        # an s3 trigger, a dashboard), each with the include_* flag it needs.
        self.extra_entries: dict[str, tuple[bytes, str | None]] = {}
        self.revision = 0  # bumped on every change; keys the archive cache
        self._clock = 0
        self._version_seq = 0
        self._archive_cache: dict[tuple[Any, ...], tuple[int, list[tuple[str, bytes]]]] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def _now(self) -> str:
        self._clock += 1
        return (_EPOCH + timedelta(seconds=self._clock)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")

    def _changed(self) -> None:
        self.revision += 1

    def _meta(
        self, by: str, edited_at: str | None = None, deployment_message: str | None = None
    ) -> ItemMeta:
        now = edited_at or self._now()
        return ItemMeta(
            created_by=by,
            created_at=now,
            edited_by=by,
            edited_at=now,
            deployment_message=deployment_message,
        )

    def _put(self, kind: str, key: str, data: JsonObj, meta: ItemMeta) -> Item:
        with self._lock:
            item = Item(data=data, meta=meta)
            if kind in ("script", "flow", "app"):
                self._new_version(kind, key, item, meta.created_by, meta.deployment_message)
            self.items[kind][key] = item
            self._changed()
            return item

    def _new_version(self, kind: str, key: str, item: Item, by: str, message: str | None) -> None:
        """Scripts get a new hash per version; flows and apps a new version id."""
        if kind == "script":
            seed = f"{self.id}/{key}/{self.revision}/{len(item.history)}/{item.data.get('content')}"
            new_id = hashlib.sha256(seed.encode()).hexdigest()[:16]
            item.meta.hash = new_id
        else:
            self._version_seq += 1  # like the flow_version/app_version serial ids
            item.meta.version_id = self._version_seq
            new_id = str(item.meta.version_id)
        item.history.append(Version(new_id, by, item.meta.edited_at, message))

    def get(self, kind: str, path: str) -> Item:
        kind = _kind_key(kind)
        with self._lock:
            if kind == "trigger":
                for tkind in TRIGGER_KINDS:
                    if path in self.items[f"{tkind}_trigger"]:
                        return self.items[f"{tkind}_trigger"][path]
                raise KeyError(path)
            return self.items[kind][path]

    def paths(self, kind: str) -> list[str]:
        with self._lock:
            return sorted(self.items[_kind_key(kind)])

    # -- adding items -----------------------------------------------------------------------

    def add_folder(
        self,
        name: str,
        *,
        owners: list[str] | None = None,
        extra_perms: dict[str, bool] | None = None,
        summary: str | None = None,
        display_name: str | None = None,
        created_by: str = "admin",
        **extra: Any,
    ) -> Item:
        data: JsonObj = {
            "display_name": display_name or name,
            "owners": list(owners if owners is not None else ["u/admin"]),
            "extra_perms": dict(extra_perms or {}),
            "summary": summary,
            **extra,
        }
        return self._put("folder", name, data, self._meta(created_by))

    def _ensure_folder(self, path: str) -> None:
        """Items under f/<x>/ need the folder to exist, as on the real server."""
        parts = path.split("/")
        if len(parts) >= 3 and parts[0] == "f" and parts[1] not in self.items["folder"]:
            self.add_folder(parts[1])

    def add_script(
        self,
        path: str,
        *,
        language: str = "python3",
        content: str | None = None,
        summary: str = "",
        description: str = "",
        schema: JsonObj | None = None,
        lock: str | None = None,
        kind: str = "script",
        edited_by: str = "admin",
        deployment_message: str | None = None,
        archived: bool = False,
        **extra: Any,
    ) -> Item:
        """A new script, or a new version of it (new hash) when the path exists."""
        with self._lock:
            self._ensure_folder(path)
            data: JsonObj = {
                "summary": summary,
                "description": description,
                "schema": schema if schema is not None else default_schema(),
                "lock": lock,
                "kind": kind,
                "language": language,
                "content": content if content is not None else default_content(language),
                **extra,
            }
            old = self.items["script"].get(path)
            meta = self._meta(edited_by, deployment_message=deployment_message)
            meta.archived = archived
            if old is None:
                return self._put("script", path, data, meta)
            # Each script version is its own row: created_by is per version.
            item = Item(data=data, meta=meta, history=old.history)
            self._new_version("script", path, item, edited_by, deployment_message)
            self.items["script"][path] = item
            self._changed()
            return item

    def add_flow(
        self,
        path: str,
        *,
        summary: str = "",
        description: str = "",
        schema: JsonObj | None = None,
        value: JsonObj | None = None,
        edited_by: str = "admin",
        deployment_message: str | None = None,
        archived: bool = False,
        **extra: Any,
    ) -> Item:
        with self._lock:
            self._ensure_folder(path)
            data: JsonObj = {
                "summary": summary,
                "description": description,
                "schema": schema if schema is not None else default_schema(),
                "value": value if value is not None else {"modules": []},
                **extra,
            }
            meta = self._meta(edited_by, deployment_message=deployment_message)
            meta.archived = archived
            return self._put("flow", path, data, meta)

    def add_app(
        self,
        path: str,
        *,
        summary: str = "",
        value: JsonObj | None = None,
        policy: JsonObj | None = None,
        custom_path: str | None = None,
        edited_by: str = "admin",
        deployment_message: str | None = None,
        **extra: Any,
    ) -> Item:
        with self._lock:
            self._ensure_folder(path)
            data: JsonObj = {
                "summary": summary,
                "policy": policy
                if policy is not None
                else {
                    **app_policy(value or {}),
                    "on_behalf_of": f"u/{edited_by}",
                    "on_behalf_of_email": self._email_of(edited_by),
                },
                "custom_path": custom_path,
                "value": value if value is not None else {"grid": [], "hiddenInlineScripts": []},
                **extra,
            }
            return self._put(
                "app", path, data, self._meta(edited_by, deployment_message=deployment_message)
            )

    def add_resource(
        self,
        path: str,
        *,
        resource_type: str,
        value: Any = None,
        description: str | None = "",
        edited_by: str = "admin",
        **extra: Any,
    ) -> Item:
        with self._lock:
            self._ensure_folder(path)
            data: JsonObj = {
                "value": value if value is not None else {},
                "description": description,
                "resource_type": resource_type,
                **extra,
            }
            return self._put("resource", path, data, self._meta(edited_by))

    def add_resource_type(
        self,
        name: str,
        *,
        schema: JsonObj | None = None,
        description: str | None = "",
        format_extension: str | None = None,
        is_fileset: bool = False,
        edited_by: str = "admin",
        **extra: Any,
    ) -> Item:
        data: JsonObj = {
            "schema": schema if schema is not None else {"type": "object", "properties": {}},
            "description": description,
            "format_extension": format_extension,
            "is_fileset": is_fileset,
            **extra,
        }
        return self._put("resource_type", name, data, self._meta(edited_by))

    def add_variable(
        self,
        path: str,
        *,
        value: str = "",
        is_secret: bool = False,
        description: str = "",
        account: int | None = None,
        is_oauth: bool = False,
        expires_at: str | None = None,
        edited_by: str = "admin",
        already_encrypted: bool = False,
        **extra: Any,
    ) -> Item:
        """Secrets are stored encrypted, as the server stores them."""
        with self._lock:
            self._ensure_folder(path)
            stored = value
            if is_secret and not already_encrypted:
                stored = encrypt_secret(self.encryption_key, value)
            data: JsonObj = {
                "value": stored,
                "is_secret": is_secret,
                "description": description,
                "account": account,
                "is_oauth": is_oauth,
                "expires_at": expires_at,
                **extra,
            }
            return self._put("variable", path, data, self._meta(edited_by))

    def add_schedule(self, path: str, *, edited_by: str = "admin", **fields: Any) -> Item:
        with self._lock:
            self._ensure_folder(path)
            data = default_schedule(self._email_of(edited_by))
            data.update(fields)
            return self._put("schedule", path, data, self._meta(edited_by))

    def add_trigger(
        self, path: str, kind: str = "http", *, edited_by: str = "admin", **fields: Any
    ) -> Item:
        if kind not in TRIGGER_KINDS:
            raise ValueError(f"unknown trigger kind {kind!r}")
        with self._lock:
            self._ensure_folder(path)
            data = (
                default_http_trigger()
                if kind == "http"
                else {"script_path": "", "is_flow": False, "mode": "enabled"}
            )
            data.update(fields)
            return self._put(f"{kind}_trigger", path, data, self._meta(edited_by))

    def add_user(
        self,
        username: str,
        email: str | None = None,
        *,
        role: str = "developer",
        name: str | None = None,
        disabled: bool = False,
    ) -> Item:
        if role not in ("admin", "developer", "operator"):
            raise ValueError(f"role must be admin, developer or operator, not {role!r}")
        data: JsonObj = {
            "username": username,
            "email": email or f"{username}@windmill.dev",
            "name": name or username.capitalize(),
            "role": role,
            "disabled": disabled,
        }
        return self._put("user", username, data, self._meta("admin"))

    def add_group(
        self,
        name: str,
        *,
        summary: str | None = None,
        members: list[str] | None = None,
        admins: list[str] | None = None,
        extra_perms: dict[str, bool] | None = None,
    ) -> Item:
        """`members` and `admins` are usernames or "u/<username>"; admins are members too."""

        def norm(names: list[str] | None) -> list[str]:
            return [n if n.startswith("u/") else f"u/{n}" for n in names or []]

        admins_n = norm(admins)
        perms = dict(extra_perms or {})
        for a in admins_n:
            perms[a] = True
        data: JsonObj = {
            "summary": summary,
            "members": sorted(set(norm(members)) | set(admins_n)),
            "extra_perms": perms,
        }
        return self._put("group", name, data, self._meta("admin"))

    def add_workspace_dependency(
        self, language: str, content: str, name: str | None = None
    ) -> Item:
        if language not in _DEPENDENCY_FILES:
            raise ValueError(f"no workspace dependencies for {language!r}")
        key = f"{language}:{name or ''}"
        data: JsonObj = {"language": language, "name": name, "content": content}
        return self._put("dependency", key, data, self._meta("admin"))

    def set_settings(self, settings: JsonObj) -> None:
        """Merge v2 settings keys (name, color, webhook, error_handler, ...)."""
        with self._lock:
            settings = dict(settings)
            if "name" in settings:
                self.name = settings.pop("name")
            self.settings.update(settings)
            self._changed()

    def _email_of(self, username: str) -> str:
        user = self.items["user"].get(username)
        return user.data["email"] if user else f"{username}@windmill.dev"

    # -- changing and removing --------------------------------------------------------------

    def update(self, kind: str, path: str, **changes: Any) -> Item:
        """Change fields of an item, the way a save in the UI would.

        `edited_by`, `deployment_message`, `archived` and `edited_at` go to the metadata; every
        other key replaces the exported field. A script gets a new hash, a flow or app a new
        version. A variable's `value` is re-encrypted when the variable is secret.
        """
        kind = _kind_key(kind)
        with self._lock:
            item = self.get(kind, path)
            if kind == "trigger":
                kind = next(k for k in KINDS if self.items[k].get(path) is item)
            by = changes.pop("edited_by", "admin")
            message = changes.pop("deployment_message", None)
            meta_changes = {k: changes.pop(k) for k in ("archived", "edited_at") if k in changes}
            if (
                kind == "variable"
                and "value" in changes
                and (changes.get("is_secret", item.data.get("is_secret")))
            ):
                changes["value"] = encrypt_secret(self.encryption_key, changes["value"])
            if kind == "group":
                changes = {
                    k: (
                        sorted({m if m.startswith("u/") else f"u/{m}" for m in v})
                        if k in ("members",)
                        else v
                    )
                    for k, v in changes.items()
                }
            data = {**copy.deepcopy(item.data), **changes}
            now = meta_changes.get("edited_at") or self._now()
            meta = ItemMeta(
                **{
                    **item.meta.__dict__,
                    "edited_by": by,
                    "edited_at": now,
                    "deployment_message": message,
                    "archived": meta_changes.get("archived", item.meta.archived),
                }
            )
            new = Item(data=data, meta=meta, history=item.history)
            if kind in ("script", "flow", "app") and changes:
                self._new_version(kind, path, new, by, message)
            self.items[kind][path] = new
            self._changed()
            return new

    def remove(self, kind: str, path: str) -> None:
        """Delete an item. Scripts are archived, as `wmill` and the UI do it."""
        kind = _kind_key(kind)
        with self._lock:
            if kind == "script":
                self.items["script"][path].meta.archived = True
            elif kind == "trigger":
                for tkind in TRIGGER_KINDS:
                    self.items[f"{tkind}_trigger"].pop(path, None)
            else:
                del self.items[kind][path]
            self._changed()

    def delete(self, kind: str, path: str) -> None:
        """Delete for good (scripts included), as `scripts/delete/p/...` does."""
        kind = _kind_key(kind)
        with self._lock:
            if kind == "trigger":
                self.remove(kind, path)
                return
            del self.items[kind][path]
            self._changed()

    def add_entry(self, name: str, obj: Any, *, only_with: str | None = None) -> None:
        """An archive entry of a kind the model does not know, as a newer server writes it.

        ``only_with`` names the export flag it needs (``include_triggers`` for
        a trigger kind), as the server gates the kinds it knows.
        """
        with self._lock:
            if only_with is not None and not hasattr(ExportOptions(), only_with):
                raise ValueError(f"unknown export flag {only_with!r}")
            self.extra_entries[name] = (pretty_json(obj), only_with)
            self._changed()

    def remove_entry(self, name: str) -> None:
        with self._lock:
            del self.extra_entries[name]
            self._changed()

    def clear(self) -> None:
        with self._lock:
            self.items = {k: {} for k in KINDS}
            self.extra_entries = {}
            self.settings = {}
            self.ws_specific = []
            self.shared_ui = {}
            self._changed()

    # -- seeds ------------------------------------------------------------------------------

    def seed_basic(self) -> Workspace:
        """A small realistic workspace touching every kind the backup handles."""
        with self._lock:
            _seed_basic(self)
        return self

    def seed_synthetic(self, n_items: int, seed: int = 0) -> Workspace:
        """`n_items` items, a deterministic realistic mix, for benchmarks (10..5000)."""
        with self._lock:
            _seed_synthetic(self, n_items, seed)
        return self

    # -- the archive (§4.1) -----------------------------------------------------------------

    def archive(self, opts: ExportOptions, *, caller_is_admin: bool = True) -> bytes:
        """The tarball endpoint's body: entries cached until the workspace changes.

        The archive itself is built on each request with the current time on
        its entries, as a server that stamps build times would: its bytes
        differ on every request even when nothing changed.
        """
        key = (opts, caller_is_admin)
        with self._lock:
            cached = self._archive_cache.get(key)
            if cached and cached[0] == self.revision:
                entries = cached[1]
            else:
                entries = list(export_entries(self, opts, caller_is_admin=caller_is_admin))
                self._archive_cache[key] = (self.revision, entries)
        built = time.time()
        if opts.archive_type == "tar":
            return build_tar(entries, mtime=int(built))
        return build_zip(entries, date_time=time.localtime(built)[:6])

    def export(self, opts: ExportOptions | None = None) -> dict[str, bytes]:
        """The archive entries as a dict, for assertions."""
        with self._lock:
            return dict(export_entries(self, opts or ExportOptions.everything()))


# --- export -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportOptions:
    """The tarball query (§2.2). Unknown keys are ignored, as serde does."""

    archive_type: str = "tar"
    plain_secret: bool = False
    skip_variables: bool = False
    skip_secrets: bool = False
    skip_resources: bool = False
    skip_resource_types: bool = False
    include_schedules: bool = False
    include_triggers: bool = False
    include_users: bool = False
    include_groups: bool = False
    include_settings: bool = False
    include_key: bool = False
    include_workspace_dependencies: bool = False
    default_ts: str = "bun"
    settings_version: str = "v1"
    preserve_extra_perms: bool = False

    @classmethod
    def everything(cls) -> ExportOptions:
        return cls(
            archive_type="zip",
            include_schedules=True,
            include_triggers=True,
            include_users=True,
            include_groups=True,
            include_settings=True,
            include_workspace_dependencies=True,
            settings_version="v2",
            preserve_extra_perms=True,
        )

    @classmethod
    def from_query(cls, query: dict[str, str]) -> ExportOptions:
        def flag(name: str, *aliases: str) -> bool:
            for key in (name, *aliases):
                if key in query:
                    value = query[key]
                    if value not in ("true", "false"):
                        raise ApiError(
                            400,
                            f"Failed to deserialize query string: {key}: "
                            f"provided string was not `true` or `false`",
                        )
                    return value == "true"
            return False

        archive_type = query.get("archive_type", "tar")
        if archive_type not in ("tar", "zip"):
            raise ApiError(400, f"Invalid Archive Type {archive_type}")
        default_ts = query.get("default_ts", "bun")
        if default_ts not in ("bun", "deno"):
            raise ApiError(
                400,
                f"Failed to deserialize query string: default_ts: unknown variant `{default_ts}`",
            )
        return cls(
            archive_type=archive_type,
            plain_secret=flag("plain_secret", "plain_secrets"),
            skip_variables=flag("skip_variables"),
            skip_secrets=flag("skip_secrets"),
            skip_resources=flag("skip_resources"),
            skip_resource_types=flag("skip_resource_types"),
            include_schedules=flag("include_schedules"),
            include_triggers=flag("include_triggers"),
            include_users=flag("include_users"),
            include_groups=flag("include_groups"),
            include_settings=flag("include_settings"),
            include_key=flag("include_key"),
            include_workspace_dependencies=flag("include_workspace_dependencies"),
            default_ts=default_ts,
            settings_version=query.get("settings_version", "v1"),
            preserve_extra_perms=flag("preserve_extra_perms"),
        )


def _without_none(obj: JsonObj, keep: tuple[str, ...] = ()) -> JsonObj:
    return {k: v for k, v in obj.items() if v is not None or k in keep}


def _with_extra_perms(data: JsonObj, opts: ExportOptions) -> JsonObj:
    """Flows, scripts, apps: `extra_perms` only if non-empty and preserve_extra_perms."""
    out = {k: v for k, v in data.items() if k != "extra_perms"}
    if opts.preserve_extra_perms and data.get("extra_perms"):
        out["extra_perms"] = data["extra_perms"]
    return out


def _script_metadata(data: JsonObj, opts: ExportOptions) -> JsonObj:
    """ScriptMetadata: summary, description, schema, lock (null kept), kind, set optionals."""
    meta: JsonObj = {
        "summary": data.get("summary", ""),
        "description": data.get("description", ""),
        "schema": data.get("schema"),
        "lock": data.get("lock"),
        "kind": data.get("kind", "script"),
    }
    skip = {
        "content",
        "language",
        "auto_kind",
        "hash",
        "parent_hashes",
        "deleted",
        "lock_error_logs",
        *meta,
    }
    for key, value in _with_extra_perms(data, opts).items():
        if key in skip or key in _METADATA_KEYS or value is None:
            continue
        if key == "ws_error_handler_muted" and not value:
            continue  # exported only when true
        meta[key] = value
    return meta


def _entry(name: str, obj: Any) -> tuple[str, bytes]:
    return name, pretty_json(obj)


def export_entries(
    ws: Workspace, opts: ExportOptions, *, caller_is_admin: bool = True
) -> Iterator[tuple[str, bytes]]:
    """The archive entries in the order `workspaces_export.rs` writes them (§4.1)."""
    items = ws.items

    for name, it in sorted(items["folder"].items()):
        folder = strip_metadata(it.data)
        if not folder.get("default_permissioned_as"):
            folder.pop("default_permissioned_as", None)
        yield _entry(f"f/{name}/folder.meta.json", folder)

    for path, it in sorted(items["script"].items()):
        if it.meta.archived:
            continue
        ext = script_extension(it.data["language"], opts.default_ts)
        yield f"{path}.{ext}", it.data["content"].encode()
        yield _entry(f"{path}.script.json", _script_metadata(it.data, opts))

    if not opts.skip_resources:
        for path, it in sorted(items["resource"].items()):
            if it.data["resource_type"] in ("state", "cache"):
                continue
            res = {k: it.data[k] for k in ("value", "description", "resource_type")}
            if it.data.get("labels"):
                res["labels"] = it.data["labels"]
            yield _entry(f"{path}.resource.json", res)

    if not opts.skip_resource_types:
        for name, it in sorted(items["resource_type"].items()):
            rt = {
                k: it.data.get(k)
                for k in ("schema", "description", "format_extension", "is_fileset")
            }
            yield _entry(f"{name}.resource-type.json", rt)

    for path, it in sorted(items["flow"].items()):
        if it.meta.archived:
            continue
        flow = {k: it.data[k] for k in ("summary", "description", "schema", "value")}
        for key in (
            "dedicated_worker",
            "tag",
            "ws_error_handler_muted",
            "timeout",
            "visible_to_runner_only",
            "on_behalf_of_email",
            "labels",
        ):
            if it.data.get(key) is not None:
                flow[key] = it.data[key]
        flow.update(
            {k: v for k, v in _with_extra_perms(it.data, opts).items() if k == "extra_perms"}
        )
        yield _entry(f"{path}.flow.json", flow)

    if not opts.skip_variables:
        yield from _export_variables(ws, opts)

    for path, it in sorted(items["app"].items()):
        app: JsonObj = {
            "summary": it.data["summary"],
            "policy": {
                k: v
                for k, v in it.data["policy"].items()
                if k not in ("on_behalf_of", "on_behalf_of_email")
            },
            "custom_path": it.data.get("custom_path"),
            "value": it.data["value"],
        }
        if it.data.get("labels"):
            app["labels"] = it.data["labels"]
        app.update(
            {k: v for k, v in _with_extra_perms(it.data, opts).items() if k == "extra_perms"}
        )
        suffix = "raw_app" if it.data.get("raw_app") else "app"
        yield _entry(f"{path}.{suffix}.json", app)

    if opts.include_workspace_dependencies and caller_is_admin:
        for _key, it in sorted(items["dependency"].items()):
            dep_name = it.data.get("name")
            prefix = f"{dep_name}." if dep_name else ""
            yield (
                f"dependencies/{prefix}{_DEPENDENCY_FILES[it.data['language']]}",
                it.data["content"].encode(),
            )

    if opts.include_schedules:
        for path, it in sorted(items["schedule"].items()):
            sched = {k: v for k, v in strip_metadata(it.data).items() if k != "extra_perms"}
            yield _entry(f"{path}.schedule.json", sched)

    if opts.include_triggers:
        for tkind in TRIGGER_KINDS:
            for path, it in sorted(items[f"{tkind}_trigger"].items()):
                trig = {k: v for k, v in strip_metadata(it.data).items() if k != "extra_perms"}
                yield _entry(f"{path}.{tkind}_trigger.json", trig)

    if opts.include_users:
        for _name, it in sorted(items["user"].items()):
            user = {k: it.data[k] for k in ("username", "role", "disabled")}
            yield _entry(f"users/{it.data['email']}.user.json", user)

    if opts.include_groups:
        for name, it in sorted(items["group"].items()):
            if name == "all":
                continue
            yield _entry(f"groups/{name}.group.json", _group_export(it.data))

    if opts.include_settings:
        yield _entry("settings.json", _settings_export(ws, caller_is_admin))

    if opts.include_key:
        if not caller_is_admin:
            raise ApiError(403, "encryption key", prefix="Require Admin privileges for")
        yield _entry("encryption_key.json", ws.encryption_key)

    for name, (body, only_with) in sorted(ws.extra_entries.items()):
        if only_with is None or getattr(opts, only_with):
            yield name, body


def _export_variables(ws: Workspace, opts: ExportOptions) -> Iterator[tuple[str, bytes]]:
    for path, it in sorted(ws.items["variable"].items()):
        data = it.data
        if data.get("expires_at") is not None:
            continue
        if data["is_secret"] and opts.skip_secrets:
            continue
        value = data["value"]
        if data["is_secret"] and opts.plain_secret:
            try:
                value = decrypt_secret(ws.encryption_key, value)
            except ValueError as exc:
                raise ApiError(500, f"error decrypting value of {path}: {exc}") from exc
        var = {
            "value": value,
            "is_secret": data["is_secret"],
            "description": data.get("description", ""),
            "account": data.get("account"),
            "is_oauth": data.get("is_oauth", False),
            "expires_at": data.get("expires_at"),
        }
        if data.get("labels"):
            var["labels"] = data["labels"]
        yield _entry(f"{path}.variable.json", var)


def _group_export(data: JsonObj) -> JsonObj:
    """`{[summary,] members (admins removed), admins (sorted)}`; admins = extra_perms owners."""
    admins = sorted(
        k for k, v in (data.get("extra_perms") or {}).items() if v and k.startswith("u/")
    )
    group: JsonObj = {}
    if data.get("summary") is not None:
        group["summary"] = data["summary"]
    group["members"] = [m for m in data.get("members", []) if m not in admins]
    group["admins"] = admins
    return group


_SETTINGS_ALWAYS = ("error_handler", "success_handler")
_SETTINGS_ORDER = (
    "auto_invite",
    "webhook",
    "error_handler",
    "success_handler",
    "ai_config",
    "large_file_storage",
    "git_sync",
    "default_app",
    "default_scripts",
    "name",
    "mute_critical_alerts",
    "color",
    "operator_settings",
    "datatable",
    "slack_team_id",
    "slack_name",
    "slack_command_script",
    "slack_oauth_client_id",
    "slack_oauth_client_secret",
)


def _settings_export(ws: Workspace, caller_is_admin: bool) -> JsonObj:
    """settings.json, v2 layout (§4.1 entry 14)."""
    src = {**ws.settings, "name": ws.name}
    out: JsonObj = {}
    for key in _SETTINGS_ORDER:
        value = src.get(key)
        if key in _SETTINGS_ALWAYS or key == "slack_oauth_client_id":
            out[key] = value
        elif key == "slack_oauth_client_secret":
            out[key] = value if caller_is_admin else None
        elif value is not None:
            out[key] = value
    return out


def build_zip(
    entries: list[tuple[str, bytes]],
    date_time: tuple[int, int, int, int, int, int] = (1980, 1, 1, 0, 0, 0),
) -> bytes:
    """Deflate, file entries only, mode 0777 (§4.1); mtime 0 (zip's earliest date) by default."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries:
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o100777 << 16
            zf.writestr(info, content, compresslevel=1)
    return buf.getvalue()


def build_tar(entries: list[tuple[str, bytes]], mtime: int = 0) -> bytes:
    """The `archive_type=tar` fallback: GNU headers, mode 0777; mtime 0 by default."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), mtime, 0o777
            tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


# --- default objects ----------------------------------------------------------------------


def default_schema(properties: JsonObj | None = None, required: list[str] | None = None) -> JsonObj:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties or {},
        "required": required or [],
    }


def default_content(language: str) -> str:
    return {
        "python3": "def main():\n    return 'hello'\n",
        "deno": "export async function main() {\n  return 'hello';\n}\n",
        "bun": "export async function main() {\n  return 'hello';\n}\n",
        "nativets": "export async function main() {\n  return await fetch('https://example.com');\n}\n",
        "bash": "echo hello\n",
        "go": 'package inner\n\nfunc main() (interface{}, error) {\n\treturn "hello", nil\n}\n',
        "postgresql": "SELECT 1;\n",
        "mysql": "SELECT 1;\n",
        "powershell": "Write-Output 'hello'\n",
        "php": "<?php\n\nfunction main() {\n  return 'hello';\n}\n",
        "rust": 'fn main() -> anyhow::Result<String> {\n    Ok("hello".into())\n}\n',
    }.get(language, "-- hello\n")


def default_schedule(email: str) -> JsonObj:
    """Schedule fields as the server stores them, nulls included (§4.1 entry 10)."""
    return {
        "schedule": "0 0 * * * *",
        "timezone": "UTC",
        "enabled": True,
        "script_path": "",
        "is_flow": False,
        "args": {},
        "extra_perms": {},
        "email": email,
        "on_failure": None,
        "on_failure_times": None,
        "on_failure_exact": None,
        "on_failure_extra_args": None,
        "on_recovery": None,
        "on_recovery_times": None,
        "on_recovery_extra_args": None,
        "on_success": None,
        "on_success_extra_args": None,
        "ws_error_handler_muted": False,
        "retry": None,
        "summary": None,
        "description": None,
        "no_flow_overlap": False,
        "tag": None,
        "paused_until": None,
        "cron_version": "v2",
        "dynamic_skip": None,
    }


def default_http_trigger() -> JsonObj:
    return {
        "script_path": "",
        "is_flow": False,
        "route_path": "hello",
        "route_path_key": "hello",
        "workspaced_route": False,
        "http_method": "post",
        "authentication_method": "none",
        "authentication_resource_path": None,
        "is_async": False,
        "static_asset_config": None,
        "is_static_website": False,
        "wrap_body": False,
        "raw_string": False,
        "summary": None,
        "description": None,
        "error_handler_path": None,
        "error_handler_args": None,
        "retry": None,
        "extra_perms": {},
        "mode": "enabled",
    }


# --- seeds --------------------------------------------------------------------------------

PY_LOCK = "# py: 3.11\nrequests==2.32.3\ncharset-normalizer==3.4.0\nidna==3.10\n"
BUN_LOCK = '{\n  "dependencies": {\n    "lodash": "4.17.21"\n  }\n}\n//bun.lock\n<empty>\n'
GO_LOCK = (
    "module mymod\n\ngo 1.21\n\nrequire github.com/google/uuid v1.6.0\n//go.sum\n"
    "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=\n"
)


def _seed_basic(ws: Workspace) -> None:
    ws.add_user("admin", "admin@windmill.dev", role="admin", name="Admin")
    ws.add_user("bob", "bob@example.com", role="developer", name="Bob")
    ws.add_user("carol", "carol@example.com", role="operator", name="Carol")
    ws.add_group(
        "all", summary="The group that always contains all users", members=["admin", "bob", "carol"]
    )
    ws.add_group("devs", summary="Developers", members=["bob"], admins=["admin"])

    ws.add_folder(
        "team",
        owners=["u/admin"],
        extra_perms={"g/devs": True},
        summary="Team folder",
        display_name="team",
    )
    ws.add_folder(
        "ops", owners=["u/admin"], extra_perms={}, summary="Operations", display_name="Ops"
    )

    ws.add_script(
        "f/team/hello_py",
        language="python3",
        summary="Hello Python",
        description="says hello",
        lock=PY_LOCK,
        content='import requests\n\n\ndef main(name: str = "world"):\n'
        '    return f"Hello {name}!"\n',
        schema=default_schema({"name": {"type": "string", "description": "", "default": "world"}}),
        deployment_message="first version",
        edited_by="bob",
    )
    ws.add_script(
        "u/admin/hello_deno",
        language="deno",
        summary="Hello Deno",
        content="export async function main(name = 'deno') {\n  return `hi ${name}`;\n}\n",
        schema=default_schema({"name": {"type": "string", "default": "deno"}}),
    )
    ws.add_script(
        "u/admin/hello_bun",
        language="bun",
        summary="Hello Bun",
        lock=BUN_LOCK,
        content="import _ from 'lodash';\n\nexport async function main(xs: number[]) {\n"
        "  return _.sum(xs);\n}\n",
        schema=default_schema({"xs": {"type": "array", "items": {"type": "number"}}}, ["xs"]),
    )
    ws.add_script(
        "f/ops/cleanup",
        language="bash",
        summary="Clean up temp files",
        content='#!/bin/bash\ndays="${1:-7}"\nfind /tmp -mtime +"$days" -delete\n',
        schema=default_schema({"days": {"type": "string", "default": "7"}}),
        tag="bash",
        timeout=120,
    )
    ws.add_script(
        "f/team/active_users",
        language="postgresql",
        summary="Active users",
        content="-- $1 since\nSELECT id, email FROM users WHERE last_seen > $1::date;\n",
        schema=default_schema(
            {
                "database": {"type": "object", "format": "resource-postgresql"},
                "since": {"type": "string"},
            },
            ["database"],
        ),
    )
    ws.add_script(
        "f/ops/health_go",
        language="go",
        summary="Health check in Go",
        lock=GO_LOCK,
        content='package inner\n\nimport "github.com/google/uuid"\n\n'
        "func main() (interface{}, error) {\n\treturn uuid.NewString(), nil\n}\n",
        envs=["REGION=eu"],
        ws_error_handler_muted=True,
    )
    ws.add_script(
        "f/team/retired",
        language="python3",
        summary="Old script",
        content="def main():\n    pass\n",
        archived=True,
    )

    ws.add_resource_type(
        "c_my_db",
        description="My DB type",
        schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
            "required": ["host"],
        },
    )
    ws.add_resource(
        "f/team/db",
        resource_type="c_my_db",
        description="The DB",
        value={"host": "db.local", "port": 5432},
    )
    ws.add_resource(
        "f/team/pg",
        resource_type="postgresql",
        description="Main Postgres",
        value={
            "host": "pg.local",
            "port": 5432,
            "user": "app",
            "dbname": "app",
            "sslmode": "prefer",
            "password": "$var:f/team/secret_var",
        },
    )
    ws.add_resource(
        "u/admin/flow_state", resource_type="state", description=None, value={"cursor": 42}
    )  # `state` resources are never exported

    ws.add_variable("f/team/plain_var", value="plain-value", description="a plain var")
    ws.add_variable(
        "f/team/secret_var", value="s3cr3t-p4ss", is_secret=True, description="a secret var"
    )

    ws.add_flow(
        "f/team/my_flow",
        summary="My flow",
        description="A flow with inline steps",
        schema=default_schema({"x": {"type": "integer", "default": 1}}),
        value=basic_flow_value(),
        deployment_message="flow v1",
        edited_by="bob",
    )
    ws.add_app("f/team/my_app", summary="My app", value=basic_app_value())

    ws.add_schedule(
        "f/team/every_hour",
        schedule="0 0 * * * *",
        timezone="Europe/Paris",
        script_path="f/team/hello_py",
        is_flow=False,
        args={"name": "cron"},
    )
    ws.add_trigger(
        "f/team/hook",
        "http",
        script_path="f/team/hello_py",
        route_path="hello",
        route_path_key="hello",
        http_method="post",
    )
    ws.set_settings({"name": "Test Workspace", "color": "#ff0000"})


def basic_flow_value() -> JsonObj:
    """Inline python and bun steps, one inside a for-loop, a branch, and a failure module."""
    return {
        "modules": [
            {
                "id": "a",
                "summary": "Compute things",
                "value": {
                    "type": "rawscript",
                    "language": "python3",
                    "content": "def main(x: int):\n    return [x, x + 1, x + 2]\n",
                    "input_transforms": {"x": {"type": "javascript", "expr": "flow_input.x"}},
                    "lock": "# py: 3.11\n",
                },
            },
            {
                "id": "b",
                "summary": "Loop",
                "value": {
                    "type": "forloopflow",
                    "iterator": {"type": "javascript", "expr": "results.a"},
                    "skip_failures": False,
                    "parallel": False,
                    "modules": [
                        {
                            "id": "c",
                            "summary": "Double each",
                            "value": {
                                "type": "rawscript",
                                "language": "bun",
                                "content": "export async function main(x: number) {\n  return x * 2;\n}\n",
                                "input_transforms": {
                                    "x": {"type": "javascript", "expr": "flow_input.iter.value"}
                                },
                            },
                        }
                    ],
                },
            },
            {
                "id": "d",
                "value": {
                    "type": "branchone",
                    "branches": [
                        {
                            "summary": "Big",
                            "expr": "results.b.length > 2",
                            "modules": [
                                {
                                    "id": "e",
                                    "summary": "Say big",
                                    "value": {
                                        "type": "rawscript",
                                        "language": "bash",
                                        "content": "echo big\n",
                                        "input_transforms": {},
                                    },
                                }
                            ],
                        }
                    ],
                    "default": [
                        {
                            "id": "f",
                            "value": {
                                "type": "script",
                                "path": "f/team/hello_py",
                                "input_transforms": {"name": {"type": "static", "value": "flow"}},
                            },
                        }
                    ],
                },
            },
        ],
        "failure_module": {
            "id": "failure",
            "summary": "Notify failure",
            "value": {
                "type": "rawscript",
                "language": "bun",
                "content": "export async function main(message: string) {\n"
                "  console.log(message);\n}\n",
                "input_transforms": {"message": {"type": "javascript", "expr": "error.message"}},
            },
        },
        "same_worker": False,
    }


def app_policy(value: JsonObj, execution_mode: str = "publisher") -> JsonObj:
    """The policy `wmill` computes on push for top-level components and background scripts:
    one `triggerables_v2` entry per inline script, keyed by id and the content's sha256."""

    def entry(key: str, inline: JsonObj) -> tuple[str, JsonObj]:
        digest = hashlib.sha256(str(inline.get("content", "")).encode()).hexdigest()
        return (
            f"{key}:rawscript/{digest}",
            {"static_inputs": {}, "one_of_inputs": {}, "allow_user_resources": []},
        )

    triggerables: JsonObj = {}
    for item in value.get("grid", []):
        runnable = (item.get("data", {}).get("componentInput") or {}).get("runnable") or {}
        if isinstance(runnable.get("inlineScript"), dict):
            k, v = entry(item["data"]["id"], runnable["inlineScript"])
            triggerables[k] = v
    for i, hidden in enumerate(value.get("hiddenInlineScripts", [])):
        if isinstance(hidden.get("inlineScript"), dict):
            k, v = entry(f"bg_{i}", hidden["inlineScript"])
            triggerables[k] = v
    return {
        "allowed_s3_keys": [],
        "s3_inputs": [],
        "triggerables_v2": triggerables,
        "execution_mode": execution_mode,
    }


def basic_app_value() -> JsonObj:
    """A low-code app with a button running an inline bun script and a hidden python one."""
    return {
        "grid": [
            {
                "3": {"fixed": False, "x": 0, "y": 0, "w": 2, "h": 1, "fullHeight": False},
                "12": {"fixed": False, "x": 0, "y": 0, "w": 2, "h": 1, "fullHeight": False},
                "id": "a",
                "data": {
                    "id": "a",
                    "type": "buttoncomponent",
                    "configuration": {"label": {"type": "static", "value": "Say hi"}},
                    "customCss": {},
                    "componentInput": {
                        "type": "runnable",
                        "fieldType": "any",
                        "fields": {},
                        "runnable": {
                            "type": "inline",
                            "name": "Say hi",
                            "inlineScript": {
                                "language": "bun",
                                "content": "export async function main() {\n  return 'hi';\n}\n",
                                "schema": default_schema(),
                                "path": "f/team/my_app/Say_hi",
                            },
                        },
                        "autoRefresh": False,
                        "recomputeOnInputChanged": False,
                    },
                },
            }
        ],
        "hiddenInlineScripts": [
            {
                "name": "Background",
                "type": "inline",
                "fields": {},
                "autoRefresh": True,
                "recomputeOnInputChanged": True,
                "inlineScript": {
                    "language": "python3",
                    "content": "def main():\n    return 1\n",
                    "lock": "# py: 3.11\n",
                    "schema": default_schema(),
                },
            }
        ],
        "fullscreen": False,
        "unusedInlineScripts": [],
        "norefreshbar": False,
        "css": {},
        "theme": {"type": "path", "path": "f/app_themes/theme_0"},
    }


_SYNTH_LANGS = ("python3", "bun", "deno", "bash", "postgresql", "go")
_SYNTH_LOCKS = {"python3": PY_LOCK, "bun": BUN_LOCK, "go": GO_LOCK}
# One cycle of 20 items: 60% scripts (5% of them under u/admin/), 10% flows, 5% apps,
# 10% resources, 10% variables. A fixed cycle keeps even 10 items a realistic mix.
_SYNTH_CYCLE = (
    "script",
    "script",
    "flow",
    "script",
    "resource",
    "script",
    "variable",
    "user_script",
    "script",
    "app",
    "script",
    "script",
    "flow",
    "script",
    "resource",
    "script",
    "variable",
    "script",
    "user_script",
    "script",
)


def _seed_synthetic(ws: Workspace, n_items: int, seed: int) -> None:
    """One folder per 50 items and one resource type, then `_SYNTH_CYCLE` repeated. The seed
    varies folders, contents and which variables are secret. Only dict inserts: fast."""
    rng = random.Random(seed)  # noqa: S311 - test data, not crypto
    if n_items <= 0:
        return
    n_folders = max(1, n_items // 50)
    folders = [f"team{i}" for i in range(n_folders)]
    for name in folders:
        ws.add_folder(name, owners=["u/admin"], summary=f"Folder {name}")
    made = n_folders
    if made < n_items:
        ws.add_resource_type(
            "c_synth",
            description="Synthetic type",
            schema={"type": "object", "properties": {"url": {"type": "string"}}},
        )
        made += 1
    n_scripts = 0
    for i in range(n_items - made):
        kind = _SYNTH_CYCLE[i % len(_SYNTH_CYCLE)]
        folder = folders[rng.randrange(n_folders)]
        path = f"u/admin/script_{i}" if kind == "user_script" else f"f/{folder}/{kind}_{i}"
        if kind in ("script", "user_script"):
            lang = _SYNTH_LANGS[n_scripts % len(_SYNTH_LANGS)]
            n_scripts += 1
            content = default_content(lang) + f"{_comment(lang)} item {i} {rng.random():.6f}\n"
            ws.add_script(
                path,
                language=lang,
                summary=f"Script {i}",
                content=content,
                description=f"synthetic script {i}",
                lock=_SYNTH_LOCKS.get(lang),
                deployment_message=f"deploy {i}",
            )
        elif kind == "flow":
            value = basic_flow_value()
            value["modules"][0]["value"]["content"] += f"# flow {i}\n"
            ws.add_flow(path, summary=f"Flow {i}", value=value, deployment_message=f"flow {i}")
        elif kind == "app":
            ws.add_app(path, summary=f"App {i}", value=basic_app_value())
        elif kind == "resource":
            ws.add_resource(
                path,
                resource_type="c_synth",
                description=f"res {i}",
                value={"url": f"https://svc{i}.local"},
            )
        else:
            ws.add_variable(
                path, value=f"value-{i}", is_secret=rng.random() < 0.3, description=f"var {i}"
            )


def _comment(language: str) -> str:
    return {"python3": "#", "bash": "#", "postgresql": "--"}.get(language, "//")


# --- HTTP ---------------------------------------------------------------------------------


@dataclass
class RequestRecord:
    """One request as the emulator saw it. The token itself is never stored."""

    method: str
    path: str
    query: dict[str, str]
    raw_query: str
    token_ok: bool
    status: int
    workspace: str | None = None
    endpoint: str = ""
    body: Any = None  # the parsed JSON body of writes, for assertions
    user_agent: str = ""  # "node" for the CLI: tells its requests from the service's


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # How it goes on the wire: "" as it is; "truncated": the promised length,
    # then half the body and a hang-up; "badstatus": a status line no HTTP
    # client can parse, then a hang-up.
    wire: str = ""


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode(), "application/json")


def text_response(text: str, status: int = 200) -> Response:
    return Response(status, text.encode(), "text/plain; charset=utf-8")


@dataclass
class Ctx:
    """What a route handler gets."""

    emulator: WindmillEmulator
    method: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    token: TokenInfo | None
    ws: Workspace | None

    @property
    def workspace(self) -> Workspace:
        assert self.ws is not None
        return self.ws

    @property
    def user(self) -> TokenInfo:
        assert self.token is not None
        return self.token


Handler = Callable[[Ctx], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    endpoint: str  # the name used by set_fault and in RequestRecord.endpoint
    handler: Handler
    auth: bool = True


_ROUTES: list[Route] = []


def route(
    method: str, template: str, endpoint: str, *, auth: bool = True
) -> Callable[[Handler], Handler]:
    """Register a handler. `{w}` is the workspace; `{path}` may contain slashes (§1.1)."""
    regex = re.escape(template).replace(r"\{w\}", r"(?P<w>[^/]+)")
    regex = regex.replace(r"\{path\}", r"(?P<path>.+)").replace(r"\{name\}", r"(?P<name>[^/]+)")
    regex = regex.replace(r"\{kind\}", r"(?P<kind>[a-z_]+)")

    def register(fn: Handler) -> Handler:
        _ROUTES.append(Route(method, re.compile(f"^{regex}$"), endpoint, fn, auth))
        return fn

    return register


# Phase 1: what `wmill sync pull` calls (§2), and workspace listings.


@route("GET", "/api/version", "version", auth=False)
def _version(ctx: Ctx) -> Response:
    return text_response(ctx.emulator.version_text)


@route("GET", "/api/users/whoami", "whoami")
def _global_whoami(ctx: Ctx) -> Response:
    u = ctx.user
    return json_response(
        {
            "email": u.email,
            "login_type": "password",
            "super_admin": u.super_admin,
            "devops": False,
            "verified": True,
            "name": u.name,
            "company": None,
            "username": u.username,
            "operator_only": False,
            "first_time_user": False,
            "role_source": "manual",
            "disabled": False,
        }
    )


@route("GET", "/api/w/{w}/users/whoami", "ws_whoami")
def _ws_whoami(ctx: Ctx) -> Response:
    return json_response(_workspace_user(ctx.workspace, ctx.user))


def _workspace_user(ws: Workspace, tok: TokenInfo) -> JsonObj:
    """The User object of the token's user in this workspace."""
    user = ws.items["user"].get(tok.username)
    role = user.data["role"] if user else ("admin" if tok.is_admin else "developer")
    groups = sorted(
        n for n, g in ws.items["group"].items() if f"u/{tok.username}" in g.data.get("members", [])
    )
    folders = sorted(
        n
        for n, f in ws.items["folder"].items()
        if tok.is_admin or f"u/{tok.username}" in f.data.get("owners", [])
    )
    owners = sorted(
        n for n, f in ws.items["folder"].items() if f"u/{tok.username}" in f.data.get("owners", [])
    )
    return {
        "workspace_id": ws.id,
        "email": user.data["email"] if user else tok.email,
        "username": tok.username,
        "is_admin": role == "admin" or tok.is_admin,
        "name": user.data["name"] if user else tok.name,
        "is_super_admin": tok.super_admin,
        "created_at": user.meta.created_at if user else _EPOCH.isoformat(),
        "operator": role == "operator",
        "disabled": user.data["disabled"] if user else False,
        "role": role,
        "groups": groups,
        "folders": folders,
        "folders_owners": owners,
        "added_via": None,
    }


@route("GET", "/api/w/{w}/workspaces/list_ws_specific", "list_ws_specific")
def _list_ws_specific(ctx: Ctx) -> Response:
    return json_response(ctx.workspace.ws_specific)


@route("GET", "/api/w/{w}/resources/file_resource_type_to_file_ext_map", "file_ext_map")
def _file_ext_map(ctx: Ctx) -> Response:
    out = {
        name: {
            "format_extension": it.data.get("format_extension"),
            "is_fileset": bool(it.data.get("is_fileset")),
        }
        for name, it in ctx.workspace.items["resource_type"].items()
        if it.data.get("format_extension") or it.data.get("is_fileset")
    }
    return json_response(out)


@route("GET", "/api/w/{w}/workspaces/tarball", "tarball")
def _tarball(ctx: Ctx) -> Response:
    opts = ExportOptions.from_query(ctx.query)
    fault = ctx.emulator.fault_for("tarball", ctx.workspace.id)
    if fault == "zip-unsupported" and opts.archive_type == "zip":
        raise ApiError(400, "Invalid Archive Type zip")
    is_admin = _workspace_user(ctx.workspace, ctx.user)["is_admin"]
    body = ctx.workspace.archive(opts, caller_is_admin=is_admin)
    # The real server sends application/x-tar for both formats (§1.3).
    return Response(
        200,
        body,
        "application/x-tar",
        {
            "Content-Disposition": f'attachment; filename="windmill-{ctx.workspace.id}.'
            f'{opts.archive_type}"'
        },
    )


@route("GET", "/api/w/{w}/shared_ui/get", "shared_ui")
def _shared_ui(ctx: Ctx) -> Response:
    return json_response({"files": ctx.workspace.shared_ui})


@route("GET", "/api/workspaces/list", "workspaces_list")
def _workspaces_list(ctx: Ctx) -> Response:
    return json_response(
        [
            {
                "id": ws.id,
                "name": ws.name,
                "owner": "admin@windmill.dev",
                "domain": None,
                "color": ws.settings.get("color"),
                "parent_workspace_id": None,
            }
            for ws in ctx.emulator.visible_workspaces(ctx.user)
        ]
    )


@route("GET", "/api/workspaces/users", "workspaces_users")
def _workspaces_users(ctx: Ctx) -> Response:
    u = ctx.user
    return json_response(
        {
            "email": u.email,
            "workspaces": [
                {
                    "id": ws.id,
                    "name": ws.name,
                    "username": u.username,
                    "color": ws.settings.get("color"),
                    "operator_settings": None,
                    "disabled": False,
                    "parent_workspace_id": None,
                    "created_by": "admin",
                }
                for ws in ctx.emulator.visible_workspaces(ctx.user)
            ],
        }
    )


# Phase 2: what `wmill sync push` calls (§3). GETs return the full server object so that the
# CLI's `isSuperset(local, remote)` holds for an unchanged item; writes change the model, so a
# later export reflects them.

# Keys of write bodies that steer the call rather than describe the item.
_CONTROL_KEYS = frozenset(
    {
        "path",
        "name",
        "deployment_message",
        "skip_draft_deletion",
        "parent_hash",
        "auto_parent",
        "preserve_on_behalf_of",
        "preserve_permissioned_as",
        "ws_specific",
        "draft_only",
    }
)


def _body(ctx: Ctx) -> JsonObj:
    if not isinstance(ctx.body, dict):
        raise ApiError(400, "Failed to deserialize the JSON body into the target type")
    return ctx.body


def _item_fields(body: JsonObj) -> JsonObj:
    """The item's own fields of a write body; unknown keys are kept (§8.7)."""
    return {k: v for k, v in body.items() if k not in _CONTROL_KEYS}


def _require(ctx: Ctx, kind: str, key: str) -> Item:
    item = ctx.workspace.items[kind].get(key)
    if item is None:
        raise not_found(f"{kind.replace('_', ' ')} not found at name {key}")
    return item


def _write(ctx: Ctx, kind: str, key: str, data: JsonObj, *, message: str | None = None) -> Item:
    """Store a created or updated item, keeping created_by/created_at and history."""
    ws = ctx.workspace
    old = ws.items[kind].get(key)
    now = ws._now()
    by = ctx.user.username
    meta = ItemMeta(
        created_by=old.meta.created_by if old else by,
        created_at=old.meta.created_at if old else now,
        edited_by=by,
        edited_at=now,
        deployment_message=message,
    )
    item = Item(data=data, meta=meta, history=old.history if old else [])
    if kind in ("script", "flow", "app"):
        ws._new_version(kind, key, item, by, message)
    ws.items[kind][key] = item
    ws._changed()
    return item


def _drop(ctx: Ctx, kind: str, key: str) -> None:
    if ctx.workspace.items[kind].pop(key, None) is not None:
        ctx.workspace._changed()


def _created(text: str) -> Response:
    return text_response(text, 201)


# -- scripts -------------------------------------------------------------------------------

# Script fields the real `Script` struct always serialises (§3.2); the rest only when set.
_SCRIPT_ALWAYS = ("summary", "description", "content", "schema", "language", "kind", "tag")


def full_script(ws: Workspace, path: str, it: Item) -> JsonObj:
    data = it.data
    out: JsonObj = {
        "workspace_id": ws.id,
        "hash": it.meta.hash,
        "path": path,
        "parent_hashes": [v.id for v in reversed(it.history[:-1])],
        "created_by": it.history[-1].created_by if it.history else it.meta.created_by,
        "created_at": it.meta.edited_at,
        "archived": it.meta.archived,
        "deleted": False,
        "extra_perms": data.get("extra_perms") or {},
        "lock_error_logs": None,
        "starred": False,
    }
    for key in _SCRIPT_ALWAYS:
        out[key] = data.get(key)
    out["ws_error_handler_muted"] = bool(data.get("ws_error_handler_muted"))
    for key, value in data.items():
        if key not in out and value is not None:
            out[key] = value
    return out


@route("GET", "/api/w/{w}/scripts/get/p/{path}", "scripts/get")
def _script_get(ctx: Ctx) -> Response:
    it = ctx.workspace.items["script"].get(ctx.params["path"])
    if it is None or it.meta.archived:
        raise not_found(f"script not found at path {ctx.params['path']}")
    return json_response(full_script(ctx.workspace, ctx.params["path"], it))


@route("GET", "/api/w/{w}/scripts/get/h/{name}", "scripts/get_by_hash")
def _script_get_by_hash(ctx: Ctx) -> Response:
    for path, it in ctx.workspace.items["script"].items():
        if it.meta.hash == ctx.params["name"]:
            return json_response(full_script(ctx.workspace, path, it))
    raise not_found(f"script not found at hash {ctx.params['name']}")


@route("POST", "/api/w/{w}/scripts/create", "scripts/create")
def _script_create(ctx: Ctx) -> Response:
    """Answers 201 with the new hash (the CLI rejects any other status)."""
    body = _body(ctx)
    for key in ("path", "content", "language"):
        if not isinstance(body.get(key), str):
            raise ApiError(400, f"missing field `{key}`")
    path = body["path"]
    old = ctx.workspace.items["script"].get(path)
    if old is not None and not old.meta.archived and not body.get("parent_hash"):
        raise ApiError(400, f"Path conflict for {path} with non-archived hash {old.meta.hash}")
    if (
        old is not None
        and body.get("parent_hash")
        and body["parent_hash"] != old.meta.hash
        and not body.get("auto_parent")
    ):
        raise ApiError(
            400, f"The parent hash {body['parent_hash']} is not the latest version of {path}"
        )
    data = {
        "summary": "",
        "description": "",
        "schema": None,
        "lock": None,
        "kind": "script",
        **_item_fields(body),
    }
    if (
        ctx.query.get("skip_if_noop") == "true"
        and old is not None
        and not old.meta.archived
        and old.data == data
    ):
        return _created(str(old.meta.hash))
    item = _write(ctx, "script", path, data, message=body.get("deployment_message"))
    return _created(str(item.meta.hash))


@route("POST", "/api/w/{w}/scripts/archive/p/{path}", "scripts/archive")
def _script_archive(ctx: Ctx) -> Response:
    it = _require(ctx, "script", ctx.params["path"])
    it.meta.archived = True
    ctx.workspace._changed()
    return text_response(f"Script {ctx.params['path']} archived")


@route("POST", "/api/w/{w}/scripts/delete/p/{path}", "scripts/delete")
def _script_delete(ctx: Ctx) -> Response:
    _require(ctx, "script", ctx.params["path"])
    _drop(ctx, "script", ctx.params["path"])
    return text_response(ctx.params["path"])


# -- flows ---------------------------------------------------------------------------------


def full_flow(ws: Workspace, path: str, it: Item) -> JsonObj:
    return {
        "workspace_id": ws.id,
        "path": path,
        **{k: v for k, v in it.data.items() if v is not None or k == "description"},
        "extra_perms": it.data.get("extra_perms") or {},
        "edited_by": it.meta.edited_by,
        "edited_at": it.meta.edited_at,
        "archived": it.meta.archived,
        "version_id": it.meta.version_id,
        "starred": False,
    }


@route("GET", "/api/w/{w}/flows/get/{path}", "flows/get")
def _flow_get(ctx: Ctx) -> Response:
    path = ctx.params["path"]
    return json_response(full_flow(ctx.workspace, path, _require(ctx, "flow", path)))


@route("POST", "/api/w/{w}/flows/create", "flows/create")
def _flow_create(ctx: Ctx) -> Response:
    body = _body(ctx)
    path = body.get("path")
    if not isinstance(path, str) or not isinstance(body.get("value"), dict):
        raise ApiError(400, "missing field `path` or `value`")
    if path in ctx.workspace.items["flow"]:
        raise ApiError(400, f"Flow {path} already exists")
    _write(ctx, "flow", path, _flow_data(body), message=body.get("deployment_message"))
    return _created(path)


def _flow_data(body: JsonObj) -> JsonObj:
    return {"summary": "", "description": "", "schema": None, **_item_fields(body)}


@route("POST", "/api/w/{w}/flows/update/{path}", "flows/update")
def _flow_update(ctx: Ctx) -> Response:
    body, path = _body(ctx), ctx.params["path"]
    _require(ctx, "flow", path)
    new_path = body.get("path") or path
    if new_path != path:  # a rename moves the item
        ctx.workspace.items["flow"][new_path] = ctx.workspace.items["flow"].pop(path)
    _write(ctx, "flow", new_path, _flow_data(body), message=body.get("deployment_message"))
    return text_response(new_path)


@route("DELETE", "/api/w/{w}/flows/delete/{path}", "flows/delete")
def _flow_delete(ctx: Ctx) -> Response:
    """Idempotent: the CLI sends one DELETE per file of a removed flow folder (§9.3)."""
    _drop(ctx, "flow", ctx.params["path"])
    return text_response(f"Flow {ctx.params['path']} deleted")


@route("POST", "/api/w/{w}/flows/archive/{path}", "flows/archive")
def _flow_archive(ctx: Ctx) -> Response:
    it = _require(ctx, "flow", ctx.params["path"])
    body = ctx.body if isinstance(ctx.body, dict) else {}
    it.meta.archived = bool(body.get("archived", True))
    ctx.workspace._changed()
    return text_response(f"Flow {ctx.params['path']} archived")


# -- apps ----------------------------------------------------------------------------------


def full_app(ws: Workspace, path: str, it: Item) -> JsonObj:
    """AppWithLastVersion."""
    data = it.data
    return {
        "id": it.meta.version_id,
        "workspace_id": ws.id,
        "path": path,
        "summary": data.get("summary", ""),
        "versions": [int(v.id) for v in it.history],
        "created_by": it.history[-1].created_by if it.history else it.meta.created_by,
        "created_at": it.meta.edited_at,
        "value": data.get("value"),
        "policy": data.get("policy"),
        "execution_mode": (data.get("policy") or {}).get("execution_mode", "publisher"),
        "extra_perms": data.get("extra_perms") or {},
        "custom_path": data.get("custom_path"),
        "raw_app": bool(data.get("raw_app")),
        "starred": False,
        **{
            k: v
            for k, v in data.items()
            if k not in ("summary", "value", "policy", "custom_path", "extra_perms", "raw_app")
            and v is not None
        },
    }


@route("GET", "/api/w/{w}/apps/get/p/{path}", "apps/get")
def _app_get(ctx: Ctx) -> Response:
    path = ctx.params["path"]
    return json_response(full_app(ctx.workspace, path, _require(ctx, "app", path)))


def _app_data(ctx: Ctx, body: JsonObj, old: Item | None) -> JsonObj:
    """The server stamps the publisher into the policy, unless asked to keep the old one."""
    data = {"summary": "", "custom_path": None, **(old.data if old else {}), **_item_fields(body)}
    policy = dict(data.get("policy") or {"execution_mode": "publisher"})
    if body.get("preserve_on_behalf_of") and old is not None:
        for key in ("on_behalf_of", "on_behalf_of_email"):
            if key in (old.data.get("policy") or {}):
                policy[key] = old.data["policy"][key]
    else:
        policy["on_behalf_of"] = f"u/{ctx.user.username}"
        policy["on_behalf_of_email"] = ctx.user.email
    data["policy"] = policy
    return data


@route("POST", "/api/w/{w}/apps/create", "apps/create")
def _app_create(ctx: Ctx) -> Response:
    body = _body(ctx)
    path = body.get("path")
    if not isinstance(path, str) or "value" not in body:
        raise ApiError(400, "missing field `path` or `value`")
    if path in ctx.workspace.items["app"]:
        raise ApiError(400, f"App {path} already exists")
    _write(ctx, "app", path, _app_data(ctx, body, None), message=body.get("deployment_message"))
    return _created(path)


@route("POST", "/api/w/{w}/apps/update/{path}", "apps/update")
def _app_update(ctx: Ctx) -> Response:
    body, path = _body(ctx), ctx.params["path"]
    old = _require(ctx, "app", path)
    new_path = body.get("path") or path
    if new_path != path:
        ctx.workspace.items["app"][new_path] = ctx.workspace.items["app"].pop(path)
    _write(ctx, "app", new_path, _app_data(ctx, body, old), message=body.get("deployment_message"))
    return text_response(f"app {new_path} updated")


@route("DELETE", "/api/w/{w}/apps/delete/{path}", "apps/delete")
def _app_delete(ctx: Ctx) -> Response:
    """Idempotent, like flows (§3.1)."""
    _drop(ctx, "app", ctx.params["path"])
    return text_response(f"app {ctx.params['path']} deleted")


# -- resources and resource types ----------------------------------------------------------


@route("GET", "/api/w/{w}/resources/get/{path}", "resources/get")
def _resource_get(ctx: Ctx) -> Response:
    path = ctx.params["path"]
    it = _require(ctx, "resource", path)
    return json_response(
        {
            "workspace_id": ctx.workspace.id,
            "path": path,
            **it.data,
            "extra_perms": it.data.get("extra_perms") or {},
            "is_oauth": False,
            "created_by": it.meta.created_by,
            "edited_at": it.meta.edited_at,
        }
    )


@route("POST", "/api/w/{w}/resources/create", "resources/create")
def _resource_create(ctx: Ctx) -> Response:
    body = _body(ctx)
    path = body.get("path")
    if not isinstance(path, str) or not isinstance(body.get("resource_type"), str):
        raise ApiError(400, "missing field `path` or `resource_type`")
    if path in ctx.workspace.items["resource"] and ctx.query.get("update_if_exists") != "true":
        raise ApiError(400, f"A resource with path {path} already exists")
    data = {"value": None, "description": None, **_item_fields(body)}
    data.pop("is_oauth", None)  # removed from resources in newer versions
    _write(ctx, "resource", path, data)
    return _created(path)


@route("POST", "/api/w/{w}/resources/update/{path}", "resources/update")
def _resource_update(ctx: Ctx) -> Response:
    body, path = _body(ctx), ctx.params["path"]
    old = _require(ctx, "resource", path)
    new_path = body.get("path") or path
    if new_path != path:
        ctx.workspace.items["resource"].pop(path)
    _write(ctx, "resource", new_path, {**old.data, **_item_fields(body)})
    return text_response(new_path)


@route("DELETE", "/api/w/{w}/resources/delete/{path}", "resources/delete")
def _resource_delete(ctx: Ctx) -> Response:
    _drop(ctx, "resource", ctx.params["path"])
    return text_response(ctx.params["path"])


@route("GET", "/api/w/{w}/resources/type/get/{path}", "resource_types/get")
def _rt_get(ctx: Ctx) -> Response:
    name = ctx.params["path"]
    it = _require(ctx, "resource_type", name)
    return json_response(
        {
            "workspace_id": ctx.workspace.id,
            "name": name,
            "schema": None,
            "description": None,
            "format_extension": None,
            "is_fileset": False,
            **it.data,
            "created_by": it.meta.created_by,
            "edited_at": it.meta.edited_at,
        }
    )


@route("POST", "/api/w/{w}/resources/type/create", "resource_types/create")
def _rt_create(ctx: Ctx) -> Response:
    body = _body(ctx)
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "missing field `name`")
    if name in ctx.workspace.items["resource_type"]:
        raise ApiError(400, f"A resource type with name {name} already exists")
    data = {
        "schema": None,
        "description": None,
        "format_extension": None,
        "is_fileset": False,
        **_item_fields(body),
    }
    _write(ctx, "resource_type", name, data)
    return _created(name)


@route("POST", "/api/w/{w}/resources/type/update/{path}", "resource_types/update")
def _rt_update(ctx: Ctx) -> Response:
    name = ctx.params["path"]
    old = _require(ctx, "resource_type", name)
    _write(ctx, "resource_type", name, {**old.data, **_item_fields(_body(ctx))})
    return text_response(name)


@route("DELETE", "/api/w/{w}/resources/type/delete/{path}", "resource_types/delete")
def _rt_delete(ctx: Ctx) -> Response:
    _drop(ctx, "resource_type", ctx.params["path"])
    return text_response(ctx.params["path"])


# -- variables -----------------------------------------------------------------------------


@route("GET", "/api/w/{w}/variables/get/{path}", "variables/get")
def _variable_get(ctx: Ctx) -> Response:
    """Secrets: decrypted with decrypt_secret=true, the archive's ciphertext with
    include_encrypted=true, else no value."""
    path = ctx.params["path"]
    it = _require(ctx, "variable", path)
    value = it.data["value"]
    if it.data.get("is_secret"):
        if ctx.query.get("decrypt_secret", "true") == "true":
            try:
                value = decrypt_secret(ctx.workspace.encryption_key, value)
            except ValueError as exc:
                raise ApiError(500, f"error decrypting value of {path}: {exc}") from exc
        elif ctx.query.get("include_encrypted") != "true":
            value = None
    return json_response(
        {
            "workspace_id": ctx.workspace.id,
            "path": path,
            "account": None,
            "is_oauth": False,
            "expires_at": None,
            **it.data,
            "value": value,
            "extra_perms": it.data.get("extra_perms") or {},
            "is_expired": False,
            "refresh_error": None,
            "is_linked": False,
            "is_refreshed": False,
        }
    )


def _variable_value(ctx: Ctx, value: Any, is_secret: bool) -> Any:
    """`already_encrypted=true` stores the value as given, even a plaintext one (§9.4)."""
    if is_secret and isinstance(value, str) and ctx.query.get("already_encrypted") != "true":
        return encrypt_secret(ctx.workspace.encryption_key, value)
    return value


@route("POST", "/api/w/{w}/variables/create", "variables/create")
def _variable_create(ctx: Ctx) -> Response:
    body = _body(ctx)
    path = body.get("path")
    if not isinstance(path, str) or "value" not in body:
        raise ApiError(400, "missing field `path` or `value`")
    if path in ctx.workspace.items["variable"]:
        raise ApiError(400, f"A variable with path {path} already exists")
    data = {
        "value": "",
        "is_secret": False,
        "description": "",
        "account": None,
        "is_oauth": False,
        "expires_at": None,
        **_item_fields(body),
    }
    data["value"] = _variable_value(ctx, data["value"], bool(data["is_secret"]))
    _write(ctx, "variable", path, data)
    return _created(path)


@route("POST", "/api/w/{w}/variables/update/{path}", "variables/update")
def _variable_update(ctx: Ctx) -> Response:
    body, path = _body(ctx), ctx.params["path"]
    old = _require(ctx, "variable", path)
    changes = _item_fields(body)
    data = {**old.data, **changes}
    if "value" in changes:
        data["value"] = _variable_value(ctx, changes["value"], bool(data.get("is_secret")))
    new_path = body.get("path") or path
    if new_path != path:
        ctx.workspace.items["variable"].pop(path)
    _write(ctx, "variable", new_path, data)
    return text_response(new_path)


@route("DELETE", "/api/w/{w}/variables/delete/{path}", "variables/delete")
def _variable_delete(ctx: Ctx) -> Response:
    _drop(ctx, "variable", ctx.params["path"])
    return text_response(ctx.params["path"])


# -- folders -------------------------------------------------------------------------------


@route("GET", "/api/w/{w}/folders/get/{name}", "folders/get")
def _folder_get(ctx: Ctx) -> Response:
    name = ctx.params["name"]
    it = _require(ctx, "folder", name)
    return json_response(
        {
            "workspace_id": ctx.workspace.id,
            "name": name,
            **it.data,
            "created_by": it.meta.created_by,
            "edited_at": it.meta.edited_at,
        }
    )


@route("POST", "/api/w/{w}/folders/create", "folders/create")
def _folder_create(ctx: Ctx) -> Response:
    """Answers 200, unlike most creates (§8.6)."""
    body = _body(ctx)
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "missing field `name`")
    if name in ctx.workspace.items["folder"]:
        raise ApiError(400, f"Folder {name} already exists")
    data = {
        "display_name": name,
        "owners": [f"u/{ctx.user.username}"],
        "extra_perms": {},
        "summary": None,
        **_item_fields(body),
    }
    _write(ctx, "folder", name, data)
    return text_response(f"Created folder {name}")


@route("POST", "/api/w/{w}/folders/update/{name}", "folders/update")
def _folder_update(ctx: Ctx) -> Response:
    name = ctx.params["name"]
    old = _require(ctx, "folder", name)
    _write(ctx, "folder", name, {**old.data, **_item_fields(_body(ctx))})
    return text_response(f"Updated folder {name}")


@route("DELETE", "/api/w/{w}/folders/delete/{name}", "folders/delete")
def _folder_delete(ctx: Ctx) -> Response:
    _drop(ctx, "folder", ctx.params["name"])
    return text_response(f"Deleted folder {ctx.params['name']}")


# -- schedules and triggers ----------------------------------------------------------------


def _schedule_obj(ctx: Ctx, path: str, it: Item) -> JsonObj:
    return {
        "workspace_id": ctx.workspace.id,
        "path": path,
        **it.data,
        "extra_perms": it.data.get("extra_perms") or {},
        "edited_by": it.meta.edited_by,
        "edited_at": it.meta.edited_at,
        "error": None,
    }


@route("GET", "/api/w/{w}/schedules/get/{path}", "schedules/get")
def _schedule_get(ctx: Ctx) -> Response:
    path = ctx.params["path"]
    return json_response(_schedule_obj(ctx, path, _require(ctx, "schedule", path)))


@route("GET", "/api/w/{w}/schedules/list", "schedules/list")
def _schedules_list(ctx: Ctx) -> Response:
    """Every schedule, as schedules/get shows it (paged; no deployment message is kept)."""
    items = ctx.workspace.items["schedule"]
    rows = [_schedule_obj(ctx, path, items[path]) for path in sorted(items)]
    return json_response(_page(ctx, rows))


@route("POST", "/api/w/{w}/schedules/create", "schedules/create")
def _schedule_create(ctx: Ctx) -> Response:
    """Answers 200 (§8.6)."""
    body = _body(ctx)
    path = body.get("path")
    if not isinstance(path, str) or not isinstance(body.get("schedule"), str):
        raise ApiError(400, "missing field `path` or `schedule`")
    if path in ctx.workspace.items["schedule"]:
        raise ApiError(400, f"Schedule {path} already exists")
    data = {**default_schedule(ctx.user.email), **_item_fields(body)}
    _write(ctx, "schedule", path, data)
    return text_response(path)


@route("POST", "/api/w/{w}/schedules/update/{path}", "schedules/update")
def _schedule_update(ctx: Ctx) -> Response:
    path = ctx.params["path"]
    old = _require(ctx, "schedule", path)
    changes = _item_fields(_body(ctx))
    changes.pop("enabled", None)  # only setenabled changes it, as on the server
    _write(ctx, "schedule", path, {**old.data, **changes})
    return text_response(path)


@route("POST", "/api/w/{w}/schedules/setenabled/{path}", "schedules/setenabled")
def _schedule_setenabled(ctx: Ctx) -> Response:
    path = ctx.params["path"]
    old = _require(ctx, "schedule", path)
    _write(ctx, "schedule", path, {**old.data, "enabled": bool(_body(ctx).get("enabled"))})
    return text_response(f"succesfully updated schedule at path {path}")


@route("DELETE", "/api/w/{w}/schedules/delete/{path}", "schedules/delete")
def _schedule_delete(ctx: Ctx) -> Response:
    _drop(ctx, "schedule", ctx.params["path"])
    return text_response(f"schedule {ctx.params['path']} deleted")


def _trigger_kind(ctx: Ctx) -> str:
    kind = ctx.params["kind"]
    if kind not in TRIGGER_KINDS:
        raise not_found(f"no route for {kind}_triggers")
    return f"{kind}_trigger"


def _trigger_obj(ctx: Ctx, path: str, it: Item) -> JsonObj:
    return {
        "workspace_id": ctx.workspace.id,
        "path": path,
        **it.data,
        "extra_perms": it.data.get("extra_perms") or {},
        "edited_by": it.meta.edited_by,
        "edited_at": it.meta.edited_at,
        "email": ctx.workspace._email_of(it.meta.edited_by),
    }


@route("GET", "/api/w/{w}/{kind}_triggers/get/{path}", "triggers/get")
def _trigger_get(ctx: Ctx) -> Response:
    kind, path = _trigger_kind(ctx), ctx.params["path"]
    return json_response(_trigger_obj(ctx, path, _require(ctx, kind, path)))


@route("GET", "/api/w/{w}/{kind}_triggers/list", "triggers/list")
def _triggers_list(ctx: Ctx) -> Response:
    """Every trigger of one kind, as triggers/get shows it (paged)."""
    items = ctx.workspace.items[_trigger_kind(ctx)]
    rows = [_trigger_obj(ctx, path, items[path]) for path in sorted(items)]
    return json_response(_page(ctx, rows))


@route("POST", "/api/w/{w}/{kind}_triggers/create", "triggers/create")
def _trigger_create(ctx: Ctx) -> Response:
    kind, body = _trigger_kind(ctx), _body(ctx)
    path = body.get("path")
    if not isinstance(path, str):
        raise ApiError(400, "missing field `path`")
    if path in ctx.workspace.items[kind]:
        raise ApiError(400, f"A trigger with path {path} already exists")
    base = default_http_trigger() if kind == "http_trigger" else {}
    _write(ctx, kind, path, {**base, **_item_fields(body)})
    return _created(path)


@route("POST", "/api/w/{w}/{kind}_triggers/update/{path}", "triggers/update")
def _trigger_update(ctx: Ctx) -> Response:
    kind, path = _trigger_kind(ctx), ctx.params["path"]
    old = _require(ctx, kind, path)
    body = _body(ctx)
    new_path = body.get("path") or path
    if new_path != path:
        ctx.workspace.items[kind].pop(path)
    _write(ctx, kind, new_path, {**old.data, **_item_fields(body)})
    return text_response(new_path)


@route("DELETE", "/api/w/{w}/{kind}_triggers/delete/{path}", "triggers/delete")
def _trigger_delete(ctx: Ctx) -> Response:
    _drop(ctx, _trigger_kind(ctx), ctx.params["path"])
    return text_response(f"trigger {ctx.params['path']} deleted")


# -- groups and ACLs -----------------------------------------------------------------------


@route("GET", "/api/w/{w}/groups/get/{name}", "groups/get")
def _group_get(ctx: Ctx) -> Response:
    """`members` are bare usernames here, unlike the archive's `u/x` (the CLI adds `u/`)."""
    name = ctx.params["name"]
    it = _require(ctx, "group", name)
    return json_response(
        {
            "workspace_id": ctx.workspace.id,
            "name": name,
            "summary": it.data.get("summary"),
            "extra_perms": it.data.get("extra_perms") or {},
            "members": [m.removeprefix("u/") for m in it.data["members"]],
        }
    )


@route("POST", "/api/w/{w}/groups/create", "groups/create")
def _group_create(ctx: Ctx) -> Response:
    body = _body(ctx)
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "missing field `name`")
    if name in ctx.workspace.items["group"]:
        raise ApiError(400, f"Group {name} already exists")
    _write(ctx, "group", name, {"summary": body.get("summary"), "members": [], "extra_perms": {}})
    return _created(f"Created group {name}")


@route("POST", "/api/w/{w}/groups/update/{name}", "groups/update")
def _group_update(ctx: Ctx) -> Response:
    name = ctx.params["name"]
    old = _require(ctx, "group", name)
    _write(ctx, "group", name, {**old.data, "summary": _body(ctx).get("summary")})
    return text_response(f"Edited group {name}")


def _group_members(ctx: Ctx, add: bool) -> Response:
    name = ctx.params["name"]
    old = _require(ctx, "group", name)
    username = _body(ctx).get("username")
    if not isinstance(username, str):
        raise ApiError(400, "missing field `username`")
    members = set(old.data["members"])
    members.add(f"u/{username}") if add else members.discard(f"u/{username}")
    _write(ctx, "group", name, {**old.data, "members": sorted(members)})
    return text_response(f"{'Added' if add else 'Removed'} {username} to group {name}")


@route("POST", "/api/w/{w}/groups/adduser/{name}", "groups/adduser")
def _group_adduser(ctx: Ctx) -> Response:
    return _group_members(ctx, add=True)


@route("POST", "/api/w/{w}/groups/removeuser/{name}", "groups/removeuser")
def _group_removeuser(ctx: Ctx) -> Response:
    return _group_members(ctx, add=False)


@route("DELETE", "/api/w/{w}/groups/delete/{name}", "groups/delete")
def _group_delete(ctx: Ctx) -> Response:
    _drop(ctx, "group", ctx.params["name"])
    return text_response(f"Deleted group {ctx.params['name']}")


_ACL_KINDS = {
    "group_": "group",
    "script": "script",
    "flow": "flow",
    "app": "app",
    "raw_app": "app",
    "resource": "resource",
    "variable": "variable",
    "schedule": "schedule",
    "folder": "folder",
    "http_trigger": "http_trigger",
}


def _acl(ctx: Ctx, add: bool) -> Response:
    kind = _ACL_KINDS.get(ctx.params["kind"])
    if kind is None:
        raise ApiError(400, f"unsupported acl kind {ctx.params['kind']}")
    it = _require(ctx, kind, ctx.params["path"])
    owner = _body(ctx).get("owner")
    if not isinstance(owner, str):
        raise ApiError(400, "missing field `owner`")
    perms = dict(it.data.get("extra_perms") or {})
    if add:
        perms[owner] = bool(_body(ctx).get("write"))
    else:
        perms.pop(owner, None)
    it.data = {**it.data, "extra_perms": perms}
    ctx.workspace._changed()
    return text_response(f"Successfully modified granular acl for {ctx.params['path']}")


@route("POST", "/api/w/{w}/acls/add/{kind}/{path}", "acls/add")
def _acl_add(ctx: Ctx) -> Response:
    return _acl(ctx, add=True)


@route("POST", "/api/w/{w}/acls/remove/{kind}/{path}", "acls/remove")
def _acl_remove(ctx: Ctx) -> Response:
    return _acl(ctx, add=False)


# -- users ---------------------------------------------------------------------------------


def _user_obj(ws: Workspace, it: Item) -> JsonObj:
    """The User / ListUsers item shape (windmill-api `ListUsersResponse200Item`)."""
    data = it.data
    username = data["username"]
    folders = sorted(
        n
        for n, f in ws.items["folder"].items()
        if f"u/{username}" in f.data.get("owners", [])
        or f"u/{username}" in (f.data.get("extra_perms") or {})
    )
    return {
        "email": data["email"],
        "username": username,
        "is_admin": data["role"] == "admin",
        "is_super_admin": False,
        "created_at": it.meta.created_at,
        "operator": data["role"] == "operator",
        "disabled": data["disabled"],
        "folders": folders,
        "folders_read": folders,
        "folders_owners": [
            n for n in folders if f"u/{username}" in ws.items["folder"][n].data.get("owners", [])
        ],
        "name": data.get("name"),
        "groups": sorted(
            n for n, g in ws.items["group"].items() if f"u/{username}" in g.data.get("members", [])
        ),
        "added_via": None,
    }


@route("GET", "/api/w/{w}/users/get/{name}", "users/get")
def _user_get(ctx: Ctx) -> Response:
    it = _require(ctx, "user", ctx.params["name"])
    return json_response({"workspace_id": ctx.workspace.id, **_user_obj(ctx.workspace, it)})


@route("POST", "/api/w/{w}/users/update/{name}", "users/update")
def _user_update(ctx: Ctx) -> Response:
    name, body = ctx.params["name"], _body(ctx)
    old = _require(ctx, "user", name)
    role = old.data["role"]
    if "is_admin" in body or "operator" in body:
        role = (
            "admin" if body.get("is_admin") else "operator" if body.get("operator") else "developer"
        )
    disabled = body.get("disabled", old.data["disabled"])
    _write(ctx, "user", name, {**old.data, "role": role, "disabled": bool(disabled)})
    return text_response(f"user {name} updated")


@route("POST", "/api/w/{w}/workspaces/add_user", "workspaces/add_user")
def _user_add(ctx: Ctx) -> Response:
    body = _body(ctx)
    email = body.get("email")
    if not isinstance(email, str):
        raise ApiError(400, "missing field `email`")
    username = body.get("username") or email.split("@")[0]
    role = "admin" if body.get("is_admin") else "operator" if body.get("operator") else "developer"
    _write(
        ctx,
        "user",
        username,
        {
            "username": username,
            "email": email,
            "name": username.capitalize(),
            "role": role,
            "disabled": False,
        },
    )
    return _created(f"user {email} added")


@route("DELETE", "/api/w/{w}/users/delete/{name}", "users/delete")
def _user_delete(ctx: Ctx) -> Response:
    _require(ctx, "user", ctx.params["name"])
    _drop(ctx, "user", ctx.params["name"])
    return text_response(f"username {ctx.params['name']} deleted")


@route("GET", "/api/settings/global/automate_username_creation", "global_settings")
def _automate_username(ctx: Ctx) -> Response:
    return json_response(None)


# -- workspace settings and key ------------------------------------------------------------


@route("GET", "/api/w/{w}/workspaces/get_settings", "workspaces/get_settings")
def _get_settings(ctx: Ctx) -> Response:
    settings = {k: None for k in _SETTINGS_ORDER if k != "name"}
    settings.update(ctx.workspace.settings)
    return json_response({"workspace_id": ctx.workspace.id, **settings})


@route("GET", "/api/w/{w}/workspaces/get_workspace_name", "workspaces/get_workspace_name")
def _get_workspace_name(ctx: Ctx) -> Response:
    return text_response(ctx.workspace.name)


# Settings edit endpoints (§3.3) and the settings key each one sets.
_SETTINGS_EDITS = {
    "edit_webhook": "webhook",
    "edit_auto_invite": "auto_invite",
    "edit_copilot_config": "ai_config",
    "edit_error_handler": "error_handler",
    "edit_success_handler": "success_handler",
    "edit_large_file_storage_config": "large_file_storage",
    "edit_git_sync_config": "git_sync",
    "default_scripts": "default_scripts",
    "edit_default_app": "default_app",
    "change_workspace_color": "color",
    "operator_settings": "operator_settings",
    "edit_datatable_config": "datatable",
    "edit_slack_command": "slack_command_script",
    "edit_instance_groups": "auto_invite",
}


@route("POST", "/api/w/{w}/workspaces/{name}", "workspaces/edit")
def _edit_settings(ctx: Ctx) -> Response:
    endpoint = ctx.params["name"]
    key = _SETTINGS_EDITS.get(endpoint)
    if key is None:
        raise not_found(f"no route for POST workspaces/{endpoint}")
    body = ctx.body if isinstance(ctx.body, dict) else {}
    # Bodies wrap the value in its own key ({webhook}, {color}...) or are the value itself.
    value = body.get(key, body.get(endpoint.removeprefix("edit_"), body or None))
    if endpoint == "edit_datatable_config":
        value = (body.get("settings") or {}).get("datatables") or None
        value = {"datatables": value} if value else None
    # The CLI posts empty bodies for settings that are unset on both sides (§3.3); storing
    # them as unset keeps a second push a no-op (inferred: the real storage is not known).
    if value == {}:
        value = None
    ctx.workspace.set_settings({key: value})
    if endpoint == "edit_datatable_config":
        return json_response({"stranded_references": []})
    return text_response(f"Edit {key} for workspace {ctx.workspace.id}")


@route("GET", "/api/w/{w}/workspaces/encryption_key", "workspaces/encryption_key")
def _get_key(ctx: Ctx) -> Response:
    if not _workspace_user(ctx.workspace, ctx.user)["is_admin"]:
        raise ApiError(403, "encryption key", prefix="Require Admin privileges for")
    return json_response({"key": ctx.workspace.encryption_key})


# -- push epilogue (§3 #9) -----------------------------------------------------------------


@route("GET", "/api/w/{w}/jobs/queue/list", "jobs/queue/list")
def _jobs_queue(ctx: Ctx) -> Response:
    return json_response([])


@route("GET", "/api/w/{w}/jobs/completed/list", "jobs/completed/list")
def _jobs_completed(ctx: Ctx) -> Response:
    return json_response([])


# Phase 3: listings for attribution, shaped like the windmill-api (1.850.0) OpenAPI models
# `ListScriptsResponse200Item`, `ListFlowsResponse200Item` (Flow metadata, without value and
# schema, as the server's list query selects), `ListAppsResponse200Item`,
# `ListUsersResponse200Item` and the `Get{Script,Flow,App}History*` items. The deployment
# message is `deployment_msg`, the name the history models use; listings carry it only with
# `with_deployment_msg=true`, as the query flag of the same name asks.

_DEFAULT_PER_PAGE = 100


def _flag(ctx: Ctx, name: str, default: bool = False) -> bool:
    value = ctx.query.get(name)
    return default if value is None else value == "true"


def _page(ctx: Ctx, rows: list[JsonObj]) -> list[JsonObj]:
    """`page` counts from 1; `per_page` defaults to 100."""
    try:
        page = max(1, int(ctx.query.get("page", "1")))
        per_page = max(1, int(ctx.query.get("per_page", str(_DEFAULT_PER_PAGE))))
    except ValueError as exc:
        raise ApiError(400, f"Failed to deserialize query string: {exc}") from exc
    return rows[(page - 1) * per_page : page * per_page]


def _filter_paths(ctx: Ctx, paths: list[str]) -> list[str]:
    start, exact = ctx.query.get("path_start"), ctx.query.get("path_exact")
    return [
        p for p in paths if (start is None or p.startswith(start)) and (exact is None or p == exact)
    ]


def _latest(it: Item) -> Version:
    if it.history:
        return it.history[-1]
    return Version("", it.meta.created_by, it.meta.created_at, it.meta.deployment_message)


def _ordered(ctx: Ctx, rows: list[JsonObj], key: str) -> list[JsonObj]:
    """Newest first unless order_desc=false (ties broken by path for stable pages)."""
    rows.sort(key=lambda r: (r[key], r["path"]), reverse=_flag(ctx, "order_desc", True))
    return rows


@route("GET", "/api/w/{w}/scripts/list", "scripts/list")
def _scripts_list(ctx: Ctx) -> Response:
    """The latest version of each path; archived ones only with show_archived=true."""
    ws = ctx.workspace
    langs = set(filter(None, ctx.query.get("languages", "").split(",")))
    kinds = set(filter(None, ctx.query.get("kinds", "").split(",")))
    rows = []
    for path in _filter_paths(ctx, sorted(ws.items["script"])):
        it = ws.items["script"][path]
        latest = _latest(it)
        if it.meta.archived and not _flag(ctx, "show_archived"):
            continue
        if ctx.query.get("created_by") not in (None, latest.created_by):
            continue
        if (langs and it.data["language"] not in langs) or (
            kinds and it.data.get("kind", "script") not in kinds
        ):
            continue
        row = {k: v for k, v in full_script(ws, path, it).items() if k not in ("lock",)}
        row.update(
            {
                "created_by": latest.created_by,
                "created_at": latest.created_at,
                "is_template": False,
                "has_preprocessor": bool(it.data.get("has_preprocessor")),
            }
        )
        if _flag(ctx, "with_deployment_msg"):
            row["deployment_msg"] = latest.deployment_message
        rows.append(row)
    return json_response(_page(ctx, _ordered(ctx, rows, "created_at")))


@route("GET", "/api/w/{w}/flows/list", "flows/list")
def _flows_list(ctx: Ctx) -> Response:
    ws = ctx.workspace
    rows = []
    for path in _filter_paths(ctx, sorted(ws.items["flow"])):
        it = ws.items["flow"][path]
        if it.meta.archived and not _flag(ctx, "show_archived"):
            continue
        if ctx.query.get("created_by") not in (None, it.meta.edited_by):
            continue
        row: JsonObj = {
            "workspace_id": ws.id,
            "path": path,
            "summary": it.data.get("summary", ""),
            "description": it.data.get("description", ""),
            "edited_by": it.meta.edited_by,
            "edited_at": it.meta.edited_at,
            "archived": it.meta.archived,
            "extra_perms": it.data.get("extra_perms") or {},
            "starred": False,
            "draft_only": False,
        }
        for key in (
            "tag",
            "ws_error_handler_muted",
            "priority",
            "dedicated_worker",
            "timeout",
            "visible_to_runner_only",
            "on_behalf_of_email",
            "labels",
        ):
            if it.data.get(key) is not None:
                row[key] = it.data[key]
        if _flag(ctx, "with_deployment_msg"):
            row["deployment_msg"] = _latest(it).deployment_message
        rows.append(row)
    return json_response(_page(ctx, _ordered(ctx, rows, "edited_at")))


@route("GET", "/api/w/{w}/apps/list", "apps/list")
def _apps_list(ctx: Ctx) -> Response:
    """ListableApp has no editor field: the author of a version is in apps/history."""
    ws = ctx.workspace
    rows = []
    for path in _filter_paths(ctx, sorted(ws.items["app"])):
        it = ws.items["app"][path]
        if ctx.query.get("created_by") not in (None, _latest(it).created_by):
            continue
        row: JsonObj = {
            "id": it.meta.version_id,
            "workspace_id": ws.id,
            "path": path,
            "summary": it.data.get("summary", ""),
            "version": it.meta.version_id,
            "extra_perms": it.data.get("extra_perms") or {},
            "starred": False,
            "edited_at": it.meta.edited_at,
            "execution_mode": (it.data.get("policy") or {}).get("execution_mode", "publisher"),
            "raw_app": bool(it.data.get("raw_app")),
        }
        if _flag(ctx, "with_deployment_msg"):
            row["deployment_msg"] = _latest(it).deployment_message
        rows.append(row)
    return json_response(_page(ctx, _ordered(ctx, rows, "edited_at")))


def _history(ctx: Ctx, kind: str, id_key: str) -> Response:
    it = _require(ctx, kind, ctx.params["path"])
    rows = []
    for v in reversed(it.history):  # newest first
        rows.append(
            {
                id_key: int(v.id) if id_key != "script_hash" else v.id,
                "deployment_msg": v.deployment_message,
                "created_at": v.created_at,
                "created_by": v.created_by,
            }
        )
    return json_response(_page(ctx, rows))


@route("GET", "/api/w/{w}/scripts/history/p/{path}", "scripts/history")
def _scripts_history(ctx: Ctx) -> Response:
    return _history(ctx, "script", "script_hash")


@route("GET", "/api/w/{w}/flows/history/p/{path}", "flows/history")
def _flows_history(ctx: Ctx) -> Response:
    return _history(ctx, "flow", "id")


@route("GET", "/api/w/{w}/apps/history/p/{path}", "apps/history")
def _apps_history(ctx: Ctx) -> Response:
    return _history(ctx, "app", "version")


@route("GET", "/api/w/{w}/users/list", "users/list")
def _users_list(ctx: Ctx) -> Response:
    ws = ctx.workspace
    return json_response(
        [_user_obj(ws, ws.items["user"][name]) for name in sorted(ws.items["user"])]
    )


def endpoints() -> list[str]:
    """Every route name, for `set_fault` and `RequestRecord.endpoint`."""
    return sorted({rt.endpoint for rt in _ROUTES})


# --- the server ---------------------------------------------------------------------------

FAULTS = (
    "500",
    "401",
    "403",
    "404",
    "hang",
    "drop",
    "notzip",
    "empty",
    "html",
    "zip-unsupported",
    "truncated",
    "badstatus",
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "windmill-emulator"
    sys_version = ""
    timeout = 120  # reap idle keep-alive connections
    emulator: WindmillEmulator  # set on the subclass made per emulator

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        outcome = self.emulator.dispatch(self.command, self.path, self.headers, raw_body)
        if outcome is None:  # "drop": close without an answer
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(outcome)

    def _send(self, resp: Response) -> None:
        if resp.wire == "badstatus":
            self.wfile.write(b"WINDMILL/9 garbage\r\n\r\n")
            self._hang_up()
            return
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.wire == "truncated":
            self.wfile.write(resp.body[: len(resp.body) // 2])
            self._hang_up()
            return
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    def _hang_up(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler never blocks stop()
    request_queue_size = 128  # parallel CLI runs open many connections at once


class WindmillEmulator:
    """The Windmill API on 127.0.0.1 and a free port; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.base_url = ""
        self._lock = threading.RLock()
        self._tokens: dict[str, TokenInfo] = {}
        self._workspaces: dict[str, Workspace] = {}
        self._faults: dict[tuple[str, str | None], str] = {}
        self._fault_uses: dict[tuple[str, str | None], int] = {}  # faults set with `times`
        self._requests: list[RequestRecord] = []
        # What GET /api/version answers ("CE v1.819.0"): set it to play a newer server.
        self.version_text = SERVER_VERSION_TEXT
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> WindmillEmulator:
        handler = type("Handler", (_Handler,), {"emulator": self})
        self._server = _Server((self.host, 0), handler)
        port = self._server.server_address[1]
        self.base_url = f"http://{self.host}:{port}/"
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="windmill-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes "hang" and "delay" handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> WindmillEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration ----------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        *,
        username: str = "admin",
        email: str = "admin@windmill.dev",
        name: str = "Admin",
        is_admin: bool = True,
        super_admin: bool = True,
        workspaces: set[str] | None = None,
    ) -> None:
        """Accept `token`. `workspaces` limits where it is valid (None: everywhere)."""
        with self._lock:
            self._tokens[token] = TokenInfo(
                token,
                username,
                email,
                name,
                is_admin,
                super_admin,
                frozenset(workspaces) if workspaces is not None else None,
            )

    def remove_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def workspace(self, workspace_id: str, *, name: str | None = None) -> Workspace:
        """Get or create a workspace."""
        with self._lock:
            ws = self._workspaces.get(workspace_id)
            if ws is None:
                ws = Workspace(workspace_id, name, lock=self._lock)
                self._workspaces[workspace_id] = ws
            elif name is not None:
                ws.name = name
            return ws

    def delete_workspace(self, workspace_id: str) -> None:
        with self._lock:
            self._workspaces.pop(workspace_id, None)

    def visible_workspaces(self, tok: TokenInfo) -> list[Workspace]:
        with self._lock:
            return [ws for wid, ws in sorted(self._workspaces.items()) if tok.can_see(wid)]

    def set_fault(
        self,
        endpoint: str,
        fault: str | None,
        *,
        workspace: str | None = None,
        times: int | None = None,
    ) -> None:
        """Make `endpoint` misbehave (or behave again with None).

        `endpoint` is a route name (RequestRecord.endpoint: "whoami", "ws_whoami",
        "tarball", "version", "scripts/create", ...) or "*". `fault` is one of FAULTS or
        "delay:<seconds>". With `workspace`, only requests for that workspace are affected;
        with `times`, only the next that many requests (then it clears itself).
        """
        if fault is not None and fault not in FAULTS and not fault.startswith("delay:"):
            raise ValueError(f"unknown fault {fault!r}")
        if endpoint != "*" and endpoint not in endpoints():
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {endpoints()}")
        if fault is not None and fault.startswith("delay:"):
            float(fault.split(":", 1)[1])
        with self._lock:
            self._fault_uses.pop((endpoint, workspace), None)
            if fault is None:
                self._faults.pop((endpoint, workspace), None)
            else:
                self._faults[(endpoint, workspace)] = fault
                if times is not None:
                    self._fault_uses[(endpoint, workspace)] = times

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._fault_uses.clear()

    def _take_fault(self, endpoint: str, workspace: str | None) -> str | None:
        """The fault for one request (through `fault_for`, which tests may wrap), counted."""
        fault = self.fault_for(endpoint, workspace)
        with self._lock:
            for key in ((endpoint, workspace), ("*", workspace), (endpoint, None), ("*", None)):
                if key in self._faults:
                    if key in self._fault_uses:
                        self._fault_uses[key] -= 1
                        if self._fault_uses[key] <= 0:
                            del self._fault_uses[key]
                            del self._faults[key]
                    break
        return fault

    def fault_for(self, endpoint: str, workspace: str | None) -> str | None:
        with self._lock:
            for key in ((endpoint, workspace), ("*", workspace), (endpoint, None), ("*", None)):
                if key in self._faults:
                    return self._faults[key]
            return None

    # -- request log ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def write_requests(self) -> list[RequestRecord]:
        """Every non-GET request: what a dry run must not make."""
        return [r for r in self.requests if r.method != "GET"]

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._requests.append(rec)

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(self, method: str, target: str, headers: Any, raw_body: bytes) -> Response | None:
        """Answer one request; None means drop the connection."""
        parts = urlsplit(target)
        path, raw_query = parts.path, parts.query
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        rec = RequestRecord(method, path, query, raw_query, token_ok=False, status=0)
        rec.user_agent = str(headers.get("user-agent") or "")
        try:
            resp = self._answer(method, path, query, headers, raw_body, rec)
        except ApiError as err:
            resp = Response(err.status, err.body.encode(), "text/plain; charset=utf-8")
        except Exception as exc:  # noqa: BLE001 - a bug here must surface as a 500, not a hang
            resp = Response(
                500, f"Internal: emulator error: {exc!r}".encode(), "text/plain; charset=utf-8"
            )
        rec.status = resp.status if resp is not None else 0
        self._record(rec)
        return resp

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Any,
        raw_body: bytes,
        rec: RequestRecord,
    ) -> Response | None:
        found = self._match(method, path)
        if found is None:
            raise not_found(f"no route for {method} {path}")
        rt, params = found
        rec.endpoint = rt.endpoint
        rec.workspace = params.get("w")
        tok = self._authenticate(headers)
        rec.token_ok = tok is not None
        body = _parse_body(headers, raw_body)
        rec.body = body if method != "GET" else None

        fault = self._take_fault(rt.endpoint, rec.workspace)
        if fault is not None:
            injected = self._inject(fault, rt.endpoint)
            if not isinstance(injected, str):
                return injected
        if rt.auth and tok is None:
            raise ApiError(401, "Unauthorized")
        ws = None
        if "w" in params:
            assert tok is not None
            if not tok.can_see(params["w"]):
                raise ApiError(401, "Unauthorized")
            with self._lock:
                ws = self._workspaces.get(params["w"])
            if ws is None:
                raise not_found(f"workspace {params['w']} does not exist")
        ctx = Ctx(self, method, params, query, body, tok, ws)
        with self._lock:  # handlers see and change a consistent model
            resp = rt.handler(ctx)
        if fault in ("truncated", "badstatus") and resp is not None:
            resp.wire = fault
        return resp

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        for rt in _ROUTES:
            if rt.method != method:
                continue
            m = rt.pattern.match(path)
            if m:
                return rt, {k: v for k, v in m.groupdict().items() if v is not None}
        return None

    def _authenticate(self, headers: Any) -> TokenInfo | None:
        auth = headers.get("Authorization") or ""
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else ""
        if not token:  # the lock-job endpoint authenticates with a cookie (§1.2)
            for part in (headers.get("Cookie") or "").split(";"):
                k, _, v = part.strip().partition("=")
                if k == "token":
                    token = v
        with self._lock:
            return self._tokens.get(token)

    def _inject(self, fault: str, endpoint: str) -> Response | str | None:
        """The faulty answer, None to drop, or "continue" to answer normally afterwards."""
        if fault.startswith("delay:"):
            self._stopping.wait(float(fault.split(":", 1)[1]))
            return "continue"
        if fault == "hang":
            self._stopping.wait(3600)
            return None
        if fault == "drop":
            return None
        if fault == "zip-unsupported":
            return "continue"  # handled by the tarball route
        if fault in ("truncated", "badstatus"):
            return "continue"  # the real answer, broken on the wire (Response.wire)
        status_faults = {
            "500": ApiError(500, "injected fault"),
            "401": ApiError(401, "Unauthorized"),
            "403": ApiError(403, "injected fault"),
            "404": ApiError(404, "injected fault"),
        }
        if fault in status_faults:
            raise status_faults[fault]
        if fault == "html":
            return Response(200, b"<!doctype html><html><body>Sign in</body></html>", "text/html")
        if fault == "notzip":
            return Response(200, b"this is not a zip archive", "application/x-tar")
        if fault == "empty":
            if endpoint == "tarball":
                return Response(200, build_zip([]), "application/x-tar")
            return Response(200, b"", None)
        raise AssertionError(fault)


def _parse_body(headers: Any, raw: bytes) -> Any:
    if not raw:
        return None
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
    if ctype == "application/json":
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"Failed to parse the request body as JSON: {exc}") from exc
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw
