"""Trees in memory: the export becomes a Git tree without a work tree or index.

What ``checkout_tree`` + ``mirror`` + ``readme.place`` + ``git add`` did on
disk happens here on a flat ``path -> (mode, id)`` view of the base tree:
only managed paths (the caller's ``managed``, Windmill's) are made identical to the export,
everything else stays exactly as the remote had it (links, submodules and
all: nothing of the remote is ever written to disk). Trees are built
bottom-up; the objects that are new go to the caller, to be written as one
pack.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

from dulwich.errors import ChecksumMismatch, FileFormatException, ObjectFormatException
from dulwich.objects import Blob, ObjectID, ShaFile, Tree

from gitsync.errors import GitError
from gitsync.git.file_index import FileIndex, blob_id

Entry = tuple[int, ObjectID]  # (mode, object id as hex bytes)
Lookup = Callable[[ObjectID], ShaFile]
DIR = 0o040000
FILE = 0o100644
EMPTY_TREE = Tree().id


class RepositoryCorrupt(GitError):
    """The service's own copy is damaged (a power loss, a full disk): rebuild it."""

    code = "repository_corrupt"


# What dulwich raises when the files of the object store are damaged
# (truncated packs and indexes fail its parsers' checks and asserts).
DAMAGE = (
    ChecksumMismatch,
    FileFormatException,
    ObjectFormatException,
    struct.error,
    zlib.error,
    AssertionError,
    ValueError,
    IndexError,
)


@contextmanager
def local_store(what: str) -> Iterator[None]:
    """Reads of the service's own repository: damage becomes RepositoryCorrupt."""
    try:
        yield
    except DAMAGE as exc:
        raise RepositoryCorrupt(
            f"{what} failed: the service's copy of the repository is damaged",
            detail=f"{type(exc).__name__}: {exc}"[:2000],
        ) from None


@dataclass(frozen=True)
class Change:
    status: str  # "added" | "modified" | "deleted"
    path: str
    # The file's blob: the new one, or for a deletion the old one.
    blob: str = field(default="", compare=False)


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def _raw(name: str) -> bytes:
    return name.encode("utf-8", errors="surrogateescape")


def entries_of(
    get: Lookup,
    tree_id: ObjectID | None,
    *,
    under: str = "",
    dirs: dict[str, ObjectID] | None = None,
) -> dict[str, Entry]:
    """Every non-tree entry of a tree (files, links, submodules): path -> (mode, id).

    ``dirs``, if given, receives the id of every tree walked, by its path ("" the root).
    """
    found: dict[str, Entry] = {}
    if tree_id is None or tree_id == EMPTY_TREE:
        return found
    pending = [(tree_id, under)]
    while pending:
        current, prefix = pending.pop()
        tree = get(current)
        if not isinstance(tree, Tree):
            raise RepositoryCorrupt(f"object {_name(current)} is not a tree")
        if dirs is not None:
            dirs[prefix[:-1]] = current
        for item in tree.iteritems():
            path = prefix + _name(item.path)
            if stat.S_ISDIR(item.mode):
                pending.append((item.sha, path + "/"))
            else:
                found[path] = (item.mode, item.sha)
    return found


@dataclass(frozen=True)
class Base:
    """What a tree is built on: its entries and its subtrees' ids, by path."""

    entries: Mapping[str, Entry]
    dirs: Mapping[str, ObjectID]

    @classmethod
    def of(cls, get: Lookup, tree_id: ObjectID | None) -> Base:
        dirs: dict[str, ObjectID] = {}
        return cls(entries_of(get, tree_id, dirs=dirs), dirs)

    def unchanged_dirs(self, entries: Mapping[str, Entry]) -> dict[str, ObjectID]:
        """The subtrees no path under which differs in ``entries``: reused as they are."""
        changed = {p for p, e in entries.items() if self.entries.get(p) != e}
        changed.update(self.entries.keys() - entries.keys())
        dirty: set[str] = set()
        for path in changed:
            directory = path
            while directory:
                directory = directory.rpartition("/")[0]
                if directory in dirty:
                    break  # and so are all above it
                dirty.add(directory)
        return {d: tree for d, tree in self.dirs.items() if d not in dirty}


def build(
    entries: Mapping[str, Entry], new: dict[ObjectID, ShaFile], base: Base | None = None
) -> ObjectID:
    """The tree holding ``entries``; every tree object made lands in ``new``.

    A path that is a file in one entry and a directory in another keeps the
    directory (the export's layout wins over a file in its way); empty
    directories vanish, as Git cannot hold them. A directory of ``base`` with
    nothing changed under it keeps its tree as it is, not rebuilt: a change
    of one item rebuilds the few trees above it, not the thousands beside it.
    """
    reuse = base.unchanged_dirs(entries) if base is not None else {}
    root: dict[str, object] = {}
    for path, entry in sorted(entries.items()):
        parts = path.split("/")
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = entry
    return _write(root, new, "", reuse) or _empty(new)


def _write(
    node: dict[str, object], new: dict[ObjectID, ShaFile], path: str, reuse: Mapping[str, ObjectID]
) -> ObjectID | None:
    if path in reuse:
        return reuse[path]
    tree = Tree()
    for name, child in node.items():
        if isinstance(child, dict):
            sub = _write(child, new, f"{path}/{name}" if path else name, reuse)
            if sub is not None:
                tree.add(_raw(name), DIR, sub)
        else:
            mode, sha = cast(Entry, child)
            tree.add(_raw(name), mode, sha)
    if not len(tree):
        return None
    new[tree.id] = tree
    return tree.id


def _empty(new: dict[ObjectID, ShaFile]) -> ObjectID:
    tree = Tree()
    new[tree.id] = tree
    return tree.id


def stage_export(
    get: Lookup,
    base_tree: ObjectID | None,
    export: Mapping[str, str],
    prefix: str,
    readme_text: str,
    new: dict[ObjectID, ShaFile],
    managed: Callable[[str], bool],
    index: FileIndex | None = None,
    stats: Mapping[str, os.stat_result] | None = None,
) -> ObjectID:
    """The base tree with the export (and our README) in place under ``prefix``.

    ``managed`` says which paths (relative to ``prefix``) are the export's to
    decide; every other path keeps what the base tree has. ``index`` spares
    reading files unchanged since it last saw them (file_index.py); ``stats``,
    the files' stats from this sync's walk of the export, spare a stat each.
    """
    stats = stats if stats is not None else {}
    index = index if index is not None else FileIndex()
    base = Base.of(get, base_tree)
    entries = dict(base.entries)
    known = {sha for _mode, sha in entries.values()}
    root = f"{prefix}/" if prefix else ""
    for path in [p for p in entries if p.startswith(root)]:
        rel = path[len(root) :]
        if managed(rel) and rel not in export:
            del entries[path]
    # A root file of the export (settings.yaml, ...) wins over a directory of
    # the remote's in its way, which is not Windmill's and so still there:
    # build() keeps directories, and the file would silently be left out.
    in_the_way = [p for p in entries if "/" in p[len(root) :] and p.startswith(root)]
    for path in in_the_way:
        if path[len(root) :].split("/", 1)[0] in export:
            del entries[path]
    for rel, source in export.items():
        path = root + rel
        sha = index.cached(rel, source, stats.get(rel))
        old = entries.get(path)
        if sha is not None and old is not None and old[1] == sha and stat.S_ISREG(old[0]):
            continue  # unchanged and not read: keep the mode the remote has
        if sha is None or sha not in known:
            # The bytes read now are the ones written, whatever the index said.
            sha, data = index.hash_file(rel, source)
            _put(entries, path, data, known, new, sha)
        else:
            entries[path] = (FILE, sha)
    readme_path = root + "README.md"
    current = entries.get(readme_path)
    # Ours starts with its marker line (readme.MARKER); a person's does not.
    marker = readme_text.encode().split(b"\n", 1)[0]
    if current is None or _is_ours(get, current, marker):
        for path in [p for p in entries if p.startswith(readme_path + "/")]:
            del entries[path]  # a directory in the way of our file
        _put(entries, readme_path, readme_text.encode(), known, new)
    return build(entries, new, base)


def _put(
    entries: dict[str, Entry],
    path: str,
    data: bytes,
    known: set[ObjectID],
    new: dict[ObjectID, ShaFile],
    sha: ObjectID | None = None,
) -> None:
    # The blob's id straight from hashlib: building a Blob object for each of
    # thousands of unchanged files was most of a no-change sync's Git side.
    sha = sha or blob_id(data)
    old = entries.get(path)
    if old is not None and old[1] == sha and stat.S_ISREG(old[0]):
        return  # same content: keep the mode the remote has (an executable bit)
    entries[path] = (FILE, sha)
    if sha not in known:
        new[sha] = Blob.from_string(data)


def _is_ours(get: Lookup, entry: Entry, marker: bytes) -> bool:
    """A README the service wrote (with its marker), not one a person wrote."""
    mode, sha = entry
    if not stat.S_ISREG(mode):
        return False
    try:
        blob = get(sha)
    except KeyError:
        return False  # not fetched (larger than any README of ours)
    return isinstance(blob, Blob) and blob.as_raw_string().startswith(marker)


def with_updates(
    get: Lookup,
    base_tree: ObjectID,
    updates: Mapping[str, Entry | None],
    new: dict[ObjectID, ShaFile],
) -> ObjectID:
    """``base_tree`` with paths set to (mode, blob) or removed (None)."""
    base = Base.of(get, base_tree)
    entries = dict(base.entries)
    for path, entry in updates.items():
        if entry is None:
            entries.pop(path, None)
        else:
            entries[path] = entry
    return build(entries, new, base)


def diff(get: Lookup, old: ObjectID | None, new: ObjectID | None) -> list[Change]:
    """Files added, modified and deleted between two trees, by path (like diff-tree -r)."""
    changes: list[Change] = []
    _diff(get, old, new, "", changes)
    return sorted(changes, key=lambda c: c.path)


def _diff(
    get: Lookup, old: ObjectID | None, new: ObjectID | None, prefix: str, out: list[Change]
) -> None:
    if old == new:
        return
    before = _children(get, old)
    after = _children(get, new)
    for name in before.keys() | after.keys():
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        path = prefix + name
        a_dir = a is not None and stat.S_ISDIR(a[0])
        b_dir = b is not None and stat.S_ISDIR(b[0])
        if a_dir or b_dir:
            _diff(
                get, a[1] if a and a_dir else None, b[1] if b and b_dir else None, path + "/", out
            )
        if a is not None and b is not None and not a_dir and not b_dir:
            out.append(Change("modified", path, _name(b[1])))
            continue
        if a is not None and not a_dir:
            out.append(Change("deleted", path, _name(a[1])))
        if b is not None and not b_dir:
            out.append(Change("added", path, _name(b[1])))


def _children(get: Lookup, tree_id: ObjectID | None) -> dict[str, Entry]:
    if tree_id is None or tree_id == EMPTY_TREE:
        return {}
    tree = get(tree_id)
    if not isinstance(tree, Tree):
        raise RepositoryCorrupt(f"object {_name(tree_id)} is not a tree")
    return {_name(i.path): (i.mode, i.sha) for i in tree.iteritems()}
