"""What the backup leaves out: Windmill's export, item by item, against what the CLI wrote.

The pinned ``wmill`` CLI skips entries of kinds it does not know without a
word (a newer Windmill's ``x.s3_trigger.json``, ``x.dashboard.json``): the
pull exits 0 and the item is nowhere in the export. Each sync already holds
both sides, the workspace archive the CLI was answered (the recording
pass-through keeps it) and the export directory, so the comparison costs a
read of the archive's names and a walk of names already listed.

An item Windmill exported and the export lacks is a gap unless the sync's
scope leaves it out (a kind or a path the request did not ask for), the
secret policy does (secret variables, reported as ``skipped_by_policy``), or
the secret scan held it back (``held``). Both sides are read into one
vocabulary: a kind (the archive's own word: ``script``, ``flow``,
``http_trigger``, ``dashboard``...) and a path.

Pure functions, apart from ``read_archive``, which reads a body in memory.
"""

from __future__ import annotations

import functools
import json
import re
import tarfile
import zipfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from gitsync.version import CLI_VERSION
from gitsync.windmill.body import Body
from gitsync.windmill.wmill import Scope

# The kinds windmill-cli 1.819.0 writes (getTypeStrFromPath and the archive
# mapping in its pull; native triggers are "<service>_native_trigger").
TRIGGER_KINDS = frozenset(
    f"{k}_trigger"
    for k in (
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
)
KNOWN_KINDS = frozenset(
    {
        "script",
        "flow",
        "app",
        "raw_app",
        "resource",
        "resource-type",
        "variable",
        "folder",
        "schedule",
        "user",
        "group",
        "settings",
        "encryption_key",
        "dependency",
        "migration",
        *TRIGGER_KINDS,
    }
)
# Written whatever includes and excludes say (the CLI's ignoreF; docs: narrowed-pull.md).
_GLOBAL_KINDS = frozenset(
    {"resource-type", "dependency", "migration", "user", "group", "settings", "encryption_key"}
)
# Directories an item is kept in locally, by their suffix.
_DIR_SUFFIXES = (
    (".flow", "flow"),
    ("__flow", "flow"),
    (".raw_app", "raw_app"),
    ("__raw_app", "raw_app"),
    (".app", "app"),
    ("__app", "app"),
    ("__mod", "script"),
    ("__dbt", "script"),
    (".fileset", "resource"),
)
_TYPED = re.compile(r"^(?P<path>.+)\.(?P<kind>[A-Za-z0-9_-]+)\.(?P<ext>json|yaml)$")
_KIND = re.compile(r"[A-Za-z0-9_-]+")
_SCRIPT_FILES = re.compile(r"^(?P<path>.+)\.script\.(yaml|json|lock)$")
_RESOURCE_FILE = re.compile(r"^(?P<path>.+)\.resource\.file\.[^/]+$")
# Script code, longest first so "x.deno.ts" is not read as "x.deno" + ".ts".
_CODE_EXTENSIONS = sorted(
    "py ts deno.ts bun.ts go sh ps1 pg.sql my.sql bq.sql sf.sql ms.sql duckdb.sql odb.sql gql "
    "fetch.ts php rs playbook.yml cs nu java rb r dbt.yaml".split(),
    key=len,
    reverse=True,
)
_BOOKKEEPING = frozenset({"wmill.yaml", "wmill-lock.yaml", "README.md"})

UNKNOWN_KIND = f"unknown kind: the pinned wmill CLI {CLI_VERSION} does not write it"
NOT_WRITTEN = "not written by the wmill CLI"


@dataclass(frozen=True, order=True)
class Item:
    kind: str
    path: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path}


@dataclass(frozen=True, order=True)
class Gap:
    """An item Windmill has and the backup does not, and why."""

    kind: str
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "reason": self.reason}

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class Coverage:
    """One pull's coverage: what Windmill exported within scope, and what of it is missing."""

    not_backed_up: tuple[Gap, ...] = ()
    # Kinds the request's scope leaves out: not gaps, but said.
    scope_excludes: tuple[str, ...] = ()
    skipped_by_policy: tuple[Item, ...] = ()
    held: tuple[Item, ...] = ()
    # Items Windmill exported that the scope covers, and those the export holds.
    exported: int = 0
    backed_up: int = 0

    @property
    def complete(self) -> bool:
        return not self.not_backed_up

    def to_dict(self) -> dict[str, object]:
        return {
            "not_backed_up": [g.to_dict() for g in self.not_backed_up],
            "scope_excludes": list(self.scope_excludes),
            "skipped_by_policy": [i.to_dict() for i in self.skipped_by_policy],
            "held": [i.to_dict() for i in self.held],
            "exported": self.exported,
            "backed_up": self.backed_up,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Coverage:
        """The inverse of ``to_dict``; raises ValueError on anything else."""
        try:
            return cls(
                not_backed_up=tuple(
                    Gap(str(g["kind"]), str(g["path"]), str(g["reason"]))
                    for g in _records(data["not_backed_up"])
                ),
                scope_excludes=tuple(str(k) for k in _list(data["scope_excludes"])),
                skipped_by_policy=tuple(
                    Item(str(i["kind"]), str(i["path"]))
                    for i in _records(data["skipped_by_policy"])
                ),
                held=tuple(Item(str(i["kind"]), str(i["path"])) for i in _records(data["held"])),
                exported=int(str(data["exported"])),
                backed_up=int(str(data["backed_up"])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a coverage record ({exc})") from None


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise TypeError("a list was expected")
    return value


def _records(value: object) -> list[Mapping[str, object]]:
    items = _list(value)
    if not all(isinstance(i, dict) for i in items):
        raise TypeError("a list of objects was expected")
    return items  # type: ignore[return-value]


@dataclass(frozen=True)
class Archive:
    """The names of a workspace archive's entries, and which variables it holds as secrets."""

    entries: tuple[str, ...]
    secret_variables: frozenset[str] = field(default_factory=frozenset)


def read_archive(body: Body) -> Archive | None:
    """The entries of a zip (or tar) archive; None if the body is neither.

    The archive may be spooled to disk, and is never read into memory whole.
    """
    zf = body.as_zip()
    try:
        if zf is not None:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            secrets = {
                name.removesuffix(".variable.json")
                for name in names
                if name.endswith(".variable.json") and _is_secret(zf.read(name))
            }
            return Archive(tuple(names), frozenset(secrets))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        pass
    try:
        with tarfile.open(fileobj=body.reader()) as tf:
            names, secrets = [], set()
            for member in tf:
                if not member.isfile():
                    continue
                names.append(member.name)
                if member.name.endswith(".variable.json"):
                    data = tf.extractfile(member)
                    if data is not None and _is_secret(data.read()):
                        secrets.add(member.name.removesuffix(".variable.json"))
            return Archive(tuple(names), frozenset(secrets))
    except (tarfile.TarError, ValueError, OSError, EOFError):
        return None


def _is_secret(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("is_secret"))
    except (ValueError, AttributeError):
        return False


def policy_skips(archive: Archive, scope: Scope) -> frozenset[str]:
    """Variables the scope's secret policy keeps out of the backup (paths)."""
    return archive.secret_variables if scope.secrets == "skip" else frozenset()


def scope_excludes(scope: Scope) -> tuple[str, ...]:
    """The kinds the request's scope leaves out, in words."""
    out = []
    for wanted, words in (
        (scope.include_folders, "folders"),
        (scope.include_resource_types, "resource types"),
        (scope.include_schedules, "schedules"),
        (scope.include_triggers, "triggers"),
        (scope.include_groups, "groups"),
        (scope.include_users, "users"),
        (scope.include_settings, "settings"),
        (scope.secrets != "skip", "secret variables"),
    ):
        if not wanted:
            out.append(words)
    return tuple(out)


def compare(
    archive_entries: Iterable[str],
    export_files: Iterable[str],
    scope: Scope,
    skipped_by_policy: Collection[str] = (),
    held: Collection[str] = (),
) -> Coverage:
    """What of ``archive_entries`` (Windmill's export) ``export_files`` (the CLI's) lacks.

    ``skipped_by_policy`` are variable paths the secret policy keeps out
    (``policy_skips``); ``held`` the items the secret scan held back, as
    export file paths (exact) or item paths (any kind at that path).
    """
    entries = list(archive_entries)
    exported = _archive_items(entries)
    backed_up: set[Item] = set()
    for rel in export_files:
        backed_up.update(export_items(rel))
    held_items = {item for h in held for item in export_items(h)}
    held_paths = {h for h in held if not export_items(h)}
    policy = set(skipped_by_policy)
    gaps: list[Gap] = []
    skipped: list[Item] = []
    kept_back: list[Item] = []
    in_scope = 0
    # Keyed: the dataclass's own ordering builds two tuples per comparison.
    for item, names in sorted(exported.items(), key=lambda pair: (pair[0].kind, pair[0].path)):
        if not _in_scope(item, names, scope):
            continue
        in_scope += 1
        if item in held_items or item.path in held_paths:
            kept_back.append(item)
        elif item in backed_up:
            continue
        elif item.kind == "variable" and item.path in policy:
            skipped.append(item)
        else:
            reason = UNKNOWN_KIND if not _known(item.kind) else NOT_WRITTEN
            gaps.append(Gap(item.kind, item.path, reason))
    return Coverage(
        not_backed_up=tuple(gaps),
        scope_excludes=scope_excludes(scope),
        skipped_by_policy=tuple(skipped),
        held=tuple(kept_back),
        exported=in_scope,
        backed_up=in_scope - len(gaps) - len(skipped) - len(kept_back),
    )


def _typed(name: str) -> tuple[str, str, str] | None:
    """``<path>.<kind>.<json|yaml>``, split as ``_TYPED`` splits it.

    By hand: that regex's backtracking over every archive entry was a third
    of the coverage's time at 5000 items. (A name with a line break, which
    the regex treats apart, is left to it.)
    """
    if "\n" in name:
        match = _TYPED.match(name)
        return (match["path"], match["kind"], match["ext"]) if match else None
    stem, dot, ext = name.rpartition(".")
    if not dot or ext not in ("json", "yaml"):
        return None
    path, dot, kind = stem.rpartition(".")
    if not dot or not path or not _KIND.fullmatch(kind):
        return None
    return path, kind, ext


def _known(kind: str) -> bool:
    return kind in KNOWN_KINDS or kind.endswith("_native_trigger")


def _archive_items(entries: list[str]) -> dict[Item, list[str]]:
    """Each item of the archive, with the local names the CLI would give its entries."""
    names = set(entries)
    items: dict[Item, list[str]] = {}
    for name in entries:
        found = archive_item(name, names)
        if found is not None:
            item, local = found
            items.setdefault(item, []).append(local)
    return items


def archive_item(name: str, names: Collection[str] = ()) -> tuple[Item, str] | None:
    """The item an archive entry belongs to, and the file the CLI writes for it.

    ``names`` are all the archive's entries: a script's code entry belongs to
    the script whose ``.script.json`` shares its stem.
    """
    found = _named_item(name)
    if found is not None:
        return found
    # Script code: the stem of a sibling ``.script.json``, else by its extension.
    for stem in _code_stems(name):
        if not names or f"{stem}.script.json" in names:
            return Item("script", stem), name
    return Item("file", name), name


# Both asked of every archive entry at every pull (8,000 at 5000 items),
# and of the name alone: a pull's archive is mostly the last one's.
@functools.lru_cache(maxsize=1 << 16)
def _named_item(name: str) -> tuple[Item, str] | None:
    """What an entry's name alone says: its item and local file, unless it is script code."""
    top, _, rest = name.partition("/")
    if rest and top in ("dependencies", "migrations"):
        return Item("dependency" if top == "dependencies" else "migration", rest), name
    if name in ("settings.json", "encryption_key.json"):
        stem = name.removesuffix(".json")
        return Item(stem, stem), stem + ".yaml"
    if name.endswith("/folder.meta.json"):
        return Item("folder", name.removesuffix("/folder.meta.json")), name[:-4] + "yaml"
    typed = _typed(name)
    if typed and typed[2] == "json":
        path, kind, _ext = typed
        if top in ("users", "groups") and kind in ("user", "group"):
            path = path.partition("/")[2]
        local = {
            "flow": f"{path}.flow/flow.yaml",
            "app": f"{path}.app/app.yaml",
            "raw_app": f"{path}.raw_app/raw_app.yaml",
        }.get(kind, name[:-4] + "yaml")
        return Item(kind, path), local
    return None


@functools.lru_cache(maxsize=1 << 16)
def _code_stems(name: str) -> tuple[str, ...]:
    """The stems a code entry may have, by its extensions, longest first."""
    return tuple(s for ext in _CODE_EXTENSIONS if (s := name.removesuffix("." + ext)) != name)


# Asked of every exported file at every pull (12,800 files at 5000 items).
@functools.lru_cache(maxsize=1 << 16)
def export_items(rel: str) -> frozenset[Item]:
    """The items a file of the export stands for (empty for bookkeeping and the shared UI).

    A workspace-specific item's file (``x.<ws>.resource.yaml``) stands for
    ``x`` too: every name that may be the item's is counted, for an extra
    name matches nothing and a missing one would be reported as a gap.
    """
    return frozenset(_export_items(rel))


def _export_items(rel: str) -> set[Item]:
    if rel in _BOOKKEEPING:
        return set()
    parts = rel.split("/")
    top, name = parts[0], parts[-1]
    if len(parts) > 1 and top in ("dependencies", "migrations"):
        return {Item("dependency" if top == "dependencies" else "migration", rel.partition("/")[2])}
    if top == "ui":
        return set()
    if rel in ("settings.yaml", "encryption_key.yaml"):
        stem = rel.removesuffix(".yaml")
        return {Item(stem, stem)}
    for i, part in enumerate(parts[:-1]):
        for suffix, kind in _DIR_SUFFIXES:
            if part.endswith(suffix) and part != suffix:
                base = "/".join([*parts[:i], part.removesuffix(suffix)])
                return {Item(kind, base.removesuffix(".resource") if kind == "resource" else base)}
    if name == "folder.meta.yaml":
        return {Item("folder", "/".join(parts[:-1]))}
    for pattern, kind in ((_SCRIPT_FILES, "script"), (_RESOURCE_FILE, "resource")):
        match = pattern.match(rel)
        if match:
            return {Item(kind, match.group("path"))}
    typed = _typed(rel)
    if typed and typed[2] == "yaml":
        path, kind, _ext = typed
        if top in ("users", "groups") and kind in ("user", "group"):
            path = path.partition("/")[2]
        found = {Item(kind, path)}
        if "." in path.rpartition("/")[2]:
            found.add(Item(kind, path.rpartition(".")[0]))
        return found
    for ext in _CODE_EXTENSIONS:
        if rel.endswith("." + ext):
            return {Item("script", rel.removesuffix("." + ext))}
    return set()


def _in_scope(item: Item, local_names: list[str], scope: Scope) -> bool:
    """Whether the sync's scope asks for the item: its kind, then its files' paths."""
    kind = item.kind
    if kind.endswith("_trigger"):
        wanted = scope.include_triggers  # every trigger kind, known or not
    else:
        wanted = {
            "folder": scope.include_folders,
            "resource-type": scope.include_resource_types,
            "schedule": scope.include_schedules,
            "group": scope.include_groups,
            "user": scope.include_users,
            "settings": scope.include_settings,
            "encryption_key": False,  # the service never asks for the key
        }.get(kind, True)
    if not wanted:
        return False
    if kind in _GLOBAL_KINDS:
        return True  # the CLI writes these whatever includes and excludes say
    if not scope.includes:
        # As the CLI's filter: no includes and no excludes is everything;
        # excludes with an empty includes list approve nothing.
        return not scope.excludes
    return any(
        _matches(name, scope.includes) and not _matches(name, scope.excludes)
        for name in local_names
    )


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(_glob(p).fullmatch(path) for p in patterns)


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """A minimatch glob (what the CLI uses for includes and excludes) as a regular expression.

    ``*`` and ``?`` stop at ``/``; a ``**`` segment crosses any number of
    them. Request patterns hold nothing else (inputs/fields.py).
    """
    out = []
    segments = pattern.split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        for char in segment:
            out.append({"*": "[^/]*", "?": "[^/]"}.get(char) or re.escape(char))
        if not last:
            out.append("/")
    return re.compile("".join(out))
