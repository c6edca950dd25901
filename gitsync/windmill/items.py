"""From changed files to changed Windmill items, and the words that describe them.

A pull writes several files per item (a script's code, metadata and lock; a
flow's folder of inline steps). A history people can read talks about items:
"2 scripts updated", not "6 files modified". This module knows the export's
file layout (shared protocol notes, section 4.2) well enough to say which
item a file belongs to.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from gitsync.git.repo import Change

# Kind, and how many to call it (for subjects like "2 scripts, 1 flow").
_PLURAL = {
    "script": "scripts",
    "flow": "flows",
    "app": "apps",
    "resource": "resources",
    "resource type": "resource types",
    "variable": "variables",
    "folder": "folders",
    "schedule": "schedules",
    "trigger": "triggers",
    "user": "users",
    "group": "groups",
    "settings": "settings",
    "dependency": "dependencies",
    "migration": "migrations",
    "ui": "ui",
}
_DIR_KINDS = (
    ("flow", ".flow", "__flow"),
    ("app", ".app", "__app"),
    ("app", ".raw_app", "__raw_app"),
    ("script", "", "__mod"),
)
_TRIGGER = re.compile(r"^(?P<path>.+)\.(?P<kind>[a-z]+)_trigger\.(yaml|json)$")
_SCRIPT_META = re.compile(r"^(?P<path>.+)\.script\.(yaml|json|lock)$")
_RESOURCE_FILE = re.compile(r"^(?P<path>.+)\.resource\.file\.[^/]+$")
# Script code extensions, longest first so "x.deno.ts" is not read as "x.deno" + ".ts".
_CODE_EXTENSIONS = sorted(
    [
        "py",
        "ts",
        "deno.ts",
        "bun.ts",
        "go",
        "sh",
        "ps1",
        "pg.sql",
        "my.sql",
        "bq.sql",
        "sf.sql",
        "ms.sql",
        "duckdb.sql",
        "odb.sql",
        "gql",
        "fetch.ts",
        "php",
        "rs",
        "playbook.yml",
        "cs",
        "nu",
        "java",
        "rb",
        "r",
        "dbt.yaml",
    ],
    key=len,
    reverse=True,
)
# Files that are part of the backup but describe no item.
BOOKKEEPING = frozenset({"wmill.yaml", "wmill-lock.yaml", "README.md"})


@dataclass(frozen=True, order=True)
class ItemRef:
    kind: str
    path: str


@dataclass(frozen=True)
class ItemChange:
    item: ItemRef
    change: str  # added | updated | deleted | renamed
    old_path: str | None = None  # for renames
    files: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.change == "renamed":
            return f"{self.item.kind} {self.old_path} → {self.item.path}: renamed"
        return f"{self.item.kind} {self.item.path}: {self.change}"


# A sync asks this of every exported file, several times (the README's
# count, the coverage, the scan): 12,800 files at 5000 items, 9 µs each.
@functools.lru_cache(maxsize=1 << 16)
def item_of(rel: str) -> ItemRef | None:
    """The item a file of the export belongs to (None for bookkeeping files)."""
    if rel in BOOKKEEPING:
        return None
    parts = PurePosixPath(rel).parts
    name = parts[-1]
    if len(parts) == 1:
        if name.endswith((".resource-type.yaml", ".resource-type.json")):
            return ItemRef("resource type", name.rsplit(".resource-type.", 1)[0])
        if name.startswith("settings."):
            return ItemRef("settings", "settings")
        return None
    top = parts[0]
    if top == "users":
        return ItemRef("user", re.sub(r"\.user\.(yaml|json)$", "", name))
    if top == "groups":
        return ItemRef("group", re.sub(r"\.group\.(yaml|json)$", "", name))
    if top in ("dependencies", "migrations", "ui"):
        return ItemRef(
            {"dependencies": "dependency", "migrations": "migration"}.get(top, top),
            "/".join(parts[1:]),
        )
    # An item kept as a directory: x.flow/…, x__flow/…, x.app/…, x__mod/…
    for i, part in enumerate(parts[:-1]):
        for kind, dotted, undotted in _DIR_KINDS:
            for suffix in (dotted, undotted):
                if suffix and part.endswith(suffix):
                    return ItemRef(kind, "/".join([*parts[:i], part.removesuffix(suffix)]))
    if name in ("folder.meta.yaml", "folder.meta.json"):
        return ItemRef("folder", "/".join(parts[:-1]))
    for pattern, kind in (
        (_SCRIPT_META, "script"),
        (_TRIGGER, "trigger"),
        (_RESOURCE_FILE, "resource"),
    ):
        match = pattern.match(rel)
        if match:
            return ItemRef(kind, match.group("path"))
    for kind, suffix in (
        ("resource", ".resource"),
        ("variable", ".variable"),
        ("schedule", ".schedule"),
    ):
        for ext in (".yaml", ".json"):
            if rel.endswith(suffix + ext):
                return ItemRef(kind, rel.removesuffix(suffix + ext))
    if ".fileset/" in rel:
        return ItemRef("resource", rel.split(".fileset/")[0].removesuffix(".resource"))
    for ext in _CODE_EXTENSIONS:
        if rel.endswith("." + ext):
            return ItemRef("script", rel.removesuffix("." + ext))
    return ItemRef("file", rel)


def trigger_kind(files: Iterable[str]) -> str | None:
    """``http`` for ``f/x/hook.http_trigger.yaml``: which API endpoint serves the trigger."""
    for rel in files:
        match = _TRIGGER.match(rel)
        if match:
            return match.group("kind")
    return None


def group_changes(
    changes: Iterable[Change], blob_of: dict[str, str] | None = None
) -> list[ItemChange]:
    """Per-item changes; a deletion and an addition of one kind with equal content is a rename.

    ``blob_of`` maps changed paths to their blob id (old blob for deleted
    files, new blob for added ones) so renames can be recognised.
    """
    files: dict[ItemRef, list[Change]] = {}
    for change in changes:
        ref = item_of(change.path)
        if ref is not None:
            files.setdefault(ref, []).append(change)
    result: dict[ItemRef, ItemChange] = {}
    for ref, item_files in files.items():
        statuses = {c.status for c in item_files}
        verb = {frozenset({"added"}): "added", frozenset({"deleted"}): "deleted"}.get(
            frozenset(statuses), "updated"
        )
        result[ref] = ItemChange(ref, verb, files=tuple(sorted(c.path for c in item_files)))
    if blob_of:
        _find_renames(result, blob_of)
    return sorted(result.values(), key=lambda c: (c.item.kind, c.item.path))


def _signature(change: ItemChange, blob_of: dict[str, str]) -> tuple[str, ...]:
    # Content that does not depend on the item's path: the blobs of its files
    # keyed by their name relative to the item.
    prefix = change.item.path
    return tuple(sorted(f"{f.removeprefix(prefix)}={blob_of.get(f, '')}" for f in change.files))


def _find_renames(result: dict[ItemRef, ItemChange], blob_of: dict[str, str]) -> None:
    added = [c for c in result.values() if c.change == "added"]
    for deleted in [c for c in result.values() if c.change == "deleted"]:
        signature = _signature(deleted, blob_of)
        for new in added:
            if new.item.kind == deleted.item.kind and _signature(new, blob_of) == signature:
                result[new.item] = ItemChange(
                    new.item, "renamed", deleted.item.path, new.files + deleted.files
                )
                del result[deleted.item]
                added.remove(new)
                break


def subject(workspace: str, changes: list[ItemChange]) -> str:
    """``admins: 1 script added; 2 scripts, 1 flow updated; 1 app deleted``."""
    parts = []
    for verb in ("added", "updated", "renamed", "deleted"):
        counts = Counter(c.item.kind for c in changes if c.change == verb)
        if counts:
            things = ", ".join(
                f"{n} {kind if n == 1 else _PLURAL.get(kind, kind + 's')}"
                for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            parts.append(f"{things} {verb}")
    return f"{workspace}: {'; '.join(parts) if parts else 'backup bookkeeping updated'}"


def count_items(paths: Iterable[str]) -> Counter[str]:
    """How many items of each kind a set of exported files holds."""
    return Counter(ref.kind for ref in {item_of(p) for p in paths} if ref is not None)
