"""A narrowed pull: the CLI is given only the workspace items that changed.

``wmill sync pull`` converts every item of the workspace archive and walks
every file of the export, whatever changed. When the service knows which
archive entries changed since the last sync (it keeps their digests), it can
serve the CLI an archive that holds only the changed items and restrict the
pull to their files with ``--includes``; the CLI still does every conversion.
The rules come from a study with the real CLI 1.819.0
(``shared/docs/narrowed-pull.md``); each is named where it is applied:

1. the global kinds (resource types, users, groups, settings, workspace
   dependencies) are always served: the CLI handles their files whatever
   ``--includes`` says, and deletes those it is not given;
2. the patterns name every changed, added *and deleted* item, per kind
   (``_PATTERNS``); a local file that matches and is not served is deleted;
3. ``P.*`` (a script's pattern) matches the resource, variable, schedule or
   trigger at the script's own path: those are served as they are.

Anything this module does not know for certain raises ``Unsupported``, and
the caller pulls in full: an entry of a kind the study did not cover, a path
a glob could misread, a scope pattern it cannot evaluate, too many patterns.

The CLI still walks the whole local directory it pulls into; so the pull
runs in a scratch directory holding only the files the patterns match and
the global kinds' (``scratch.py``), and its results are moved back
(``apply_scratch``): what the CLI wrote replaces, what it deleted goes.
"""

from __future__ import annotations

import dataclasses
import io
import re
import zipfile
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gitsync.windmill.body import Body
from gitsync.windmill.recorder import Exchange, PassThrough, Request, Upstream
from gitsync.windmill.wmill import Scope

# Given to --includes when no item pattern is left: it matches nothing. An
# empty list is refused by the CLI, and no --includes at all means wmill.yaml's.
NOTHING = "__none__"
# Beyond this many patterns narrowing stops paying: the CLI tests every local
# file against every pattern (about 35 ms per pattern at 2,800 files).
MAX_PATTERNS = 40

# The archive entry suffix of each item kind the study covered.
_KIND_OF_SUFFIX = {
    "script.json": "script",
    "flow.json": "flow",
    "app.json": "app",
    "resource.json": "resource",
    "variable.json": "variable",
    "schedule.json": "schedule",
    "http_trigger.json": "http_trigger",
}
# The CLI's local files of an item at path {p} (rule 2).
_PATTERNS = {
    "script": ("{p}.*", "{p}__mod/**"),
    "flow": ("{p}.flow/**",),
    "app": ("{p}.app/**",),
    "resource": ("{p}.resource.yaml", "{p}.resource.file.*"),
    "variable": ("{p}.variable.yaml",),
    "schedule": ("{p}.schedule.yaml",),
    "http_trigger": ("{p}.http_trigger.yaml",),
    "folder": ("{p}/folder.meta.yaml",),
}
# Files an item of each kind may have, to evaluate the scope against.
_SAMPLE_FILES = {
    "script": ("{p}.script.yaml", "{p}.ts", "{p}.script.lock", "{p}__mod/m.ts"),
    "flow": ("{p}.flow/flow.yaml",),
    "app": ("{p}.app/app.yaml",),
    "resource": ("{p}.resource.yaml", "{p}.resource.file.json"),
    "variable": ("{p}.variable.yaml",),
    "schedule": ("{p}.schedule.yaml",),
    "http_trigger": ("{p}.http_trigger.yaml",),
    "folder": ("{p}/folder.meta.yaml",),
}
# Rule 3: what a script's ``P.*`` also matches.
_SAME_PATH = ("resource", "variable", "schedule", "http_trigger")
# Windmill paths are letters, digits, _ and -: nothing a glob or the comma-split reads.
_PATH = re.compile(r"(?:f|u)/[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*\Z")
_FOLDER_META = re.compile(r"f/([A-Za-z0-9_-]+)/folder\.meta\.json\Z")
# Local files and directories of the global kinds (rule 1), beside every root file.
_GLOBAL = "global"


# Read by the CLI whatever --includes says: always in the scratch folder.
GLOBAL_DIRS = ("dependencies", "users", "groups", "ui")


_GLOB_SPECIAL = set("[]{}()!+@,\\")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A minimatch glob of ``*``, ``?`` and ``**`` segments as a regex; ``Unsupported`` beyond."""
    if not pattern or _GLOB_SPECIAL & set(pattern) or pattern.startswith(("/", "./")):
        raise Unsupported(f"a scope pattern the narrowed pull cannot evaluate: {pattern!r}")
    segments = pattern.split("/")
    out = ""
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out += ".*" if last else "(?:[^/]+/)*"
            continue
        out += "".join(
            "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in segment
        )
        if not last:
            out += "/"
    return re.compile(out + r"\Z")


Item = tuple[str, str]  # (kind, path)


class Unsupported(Exception):
    """The change cannot be narrowed safely; the message says why (for the log)."""


@dataclass(frozen=True)
class Plan:
    """What the narrowed CLI is served and restricted to."""

    archive: bytes
    patterns: tuple[str, ...]  # the items' own patterns; empty when only globals changed
    items: tuple[Item, ...]  # the changed, added and deleted items (kind, path)

    @property
    def includes(self) -> tuple[str, ...]:
        return self.patterns or (NOTHING,)


def read_entries(body: Body, names: Collection[str]) -> dict[str, bytes]:
    """The entries ``names`` of a zip archive, in archive order."""
    zf = body.as_zip()
    if zf is None:
        raise Unsupported("the archive is not a zip")
    try:
        infos = zf.infolist()
        if any(info.is_dir() for info in infos):
            raise Unsupported("the archive has directory entries")
        entries = {info.filename: zf.read(info) for info in infos if info.filename in names}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error):
        raise Unsupported("the archive is not a zip") from None
    return entries


def archive_digests(exchange: Exchange) -> dict[str, str]:
    """Each entry of the exchange's zip archive with its content's sha256 (read once per answer)."""
    entries = exchange.archive_entries
    if entries is None:
        raise Unsupported("the archive is not a zip")
    digests = dict(entries)
    if len(digests) != len(entries):
        raise Unsupported("the archive has duplicate entries")
    if any(name.endswith("/") for name in digests):
        raise Unsupported("the archive has directory entries")
    return digests


def classify(names: Iterable[str]) -> dict[str, Item]:
    """Each entry's item: (kind, path), or ("global", name) for the global kinds."""
    names = list(names)
    scripts = {n.removesuffix(".script.json") for n in names if n.endswith(".script.json")}
    out: dict[str, Item] = {}
    for name in names:
        if (
            name == "settings.json"
            or name.startswith("dependencies/")
            or (name.startswith("users/") and name.endswith(".user.json"))
            or (name.startswith("groups/") and name.endswith(".group.json"))
            or ("/" not in name and name.endswith(".resource-type.json"))
        ):
            out[name] = (_GLOBAL, name)
            continue
        folder = _FOLDER_META.match(name)
        if folder:
            out[name] = ("folder", f"f/{folder.group(1)}")
            continue
        head, _, last = name.rpartition("/")
        base, dot, rest = last.partition(".")
        path = f"{head}/{base}" if head else base
        if not dot or not _PATH.match(path) or "__mod" in path:
            raise Unsupported(f"an archive entry the narrowed pull does not know: {name!r}")
        kind = _KIND_OF_SUFFIX.get(rest)
        if kind is None and path in scripts:
            kind = "script"  # the script's content entry, P.<ext>
        if kind is None:
            raise Unsupported(f"an archive entry the narrowed pull does not know: {name!r}")
        out[name] = (kind, path)
    return out


def plan(
    previous: Mapping[str, str],
    body: Body,
    digests: Mapping[str, str],
    scope: Scope,
    max_patterns: int = MAX_PATTERNS,
) -> Plan:
    """The narrowed archive and patterns from the last sync's entry digests and this archive.

    ``digests`` are this archive's (``archive_digests``): only the entries
    served are read from ``body``.
    """
    old_kinds = classify(previous)
    new_kinds = classify(digests)
    # An item changed when one of its entries did: added, removed, altered,
    # or now counted to another item (what comparing each item's entries says).
    changed = {
        item
        for name in previous.keys() | digests.keys()
        if previous.get(name) != digests.get(name) or old_kinds.get(name) != new_kinds.get(name)
        for item in (old_kinds.get(name), new_kinds.get(name))
        if item is not None and item[0] != _GLOBAL
    }
    new_items = set(new_kinds.values())
    in_scope = _scope_filter(scope)
    changed = {item for item in changed if in_scope(item)}
    served = {item for item in changed if item in new_items}
    # Rule 3: the same-path items a script's P.* matches, served unchanged.
    script_paths = {path for kind, path in changed if kind == "script"}
    served |= {item for item in new_items if item[0] in _SAME_PATH and item[1] in script_paths}
    patterns = sorted({p.format(p=path) for kind, path in changed for p in _PATTERNS[kind]})
    if len(patterns) > max_patterns:
        raise Unsupported(f"{len(patterns)} patterns (over {max_patterns})")
    # Rule 1: every global-kind entry, whatever changed.
    keep = [name for name, item in new_kinds.items() if item[0] == _GLOBAL or item in served]
    current = read_entries(body, set(keep))
    if current.keys() != set(keep):
        raise Unsupported("the archive's entries changed while it was read")
    return Plan(_zip(current, keep), tuple(patterns), tuple(sorted(changed)))


def _scope_filter(scope: Scope) -> _ScopeTest:
    """Trap 9: ``--includes`` replaces wmill.yaml's includes, so the scope is applied here."""
    if not scope.includes:
        raise Unsupported("the scope has no includes")
    includes = [glob_regex(p) for p in scope.includes]
    excludes = [glob_regex(p) for p in scope.excludes]
    return _ScopeTest(includes, excludes)


class _ScopeTest:
    def __init__(self, includes: list[re.Pattern[str]], excludes: list[re.Pattern[str]]) -> None:
        self.includes = includes
        self.excludes = excludes

    def __call__(self, item: Item) -> bool:
        kind, path = item
        verdicts = {
            any(r.match(f) for r in self.includes) and not any(r.match(f) for r in self.excludes)
            for f in (s.format(p=path) for s in _SAMPLE_FILES[kind])
        }
        if len(verdicts) != 1:
            raise Unsupported(f"the scope takes part of the files of {path}")
        return verdicts.pop()


def _zip(entries: Mapping[str, bytes], names: Iterable[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o777 << 16
            zf.writestr(info, entries[name])
    return buffer.getvalue()


# -- serving it ------------------------------------------------------------------------------


class NarrowingPassThrough(PassThrough):
    """The pass-through, serving the narrowed archive for the one planned tarball request.

    What it records is what Windmill answered (the whole archive), so the
    next skip check compares against Windmill, not against the narrowing.
    Any request the replay does not hold (a tarball asked differently, a
    call the last pull did not make) is answered live and marks the run as
    not narrowable: the caller then pulls in full.
    """

    def __init__(
        self,
        upstream: Upstream,
        replay: dict[Request, Exchange],
        timeout: float,
        tarball: Request,
        archive: bytes,
    ) -> None:
        super().__init__(upstream, replay, timeout)
        self._tarball = tarball
        self._archive = archive

    def _answer(
        self, request: Request, authorization: str | None, user_agent: str | None
    ) -> Exchange | None:
        exchange = super()._answer(request, authorization, user_agent)
        if exchange is not None and request == self._tarball:
            return dataclasses.replace(exchange, body=Body.of(self._archive))
        return exchange

    def served_as_planned(self) -> bool:
        """True if every answer came from the replay and the planned tarball was asked."""
        return not self.live_requests() and any(
            e.request == self._tarball for e in self.exchanges()
        )
