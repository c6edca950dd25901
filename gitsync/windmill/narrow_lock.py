"""wmill-lock.yaml in a narrowed pull: the CLI gets only the entries of the items it pulls.

Parsing and writing the whole lock file was most of a narrowed pull's CLI
time. A lock file in the plain form the CLI writes is split into the
entries of the items pulled (given to the CLI) and the rest (kept), and the
CLI's result is merged back in the order the CLI itself sorts keys. Any
other form is given whole, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gitsync.windmill.narrow import Item

LOCK_FILE = "wmill-lock.yaml"
_LOCK_HEAD = "version: v2\nlocks:\n"
_LOCK_EMPTY = "version: v2\nlocks: {}\n"
# A key as the CLI writes it unquoted: an item path (and "+subpath"), nothing YAML could misread.
_LOCK_KEY = re.compile(r"(?:\./)?[A-Za-z0-9_-]+(?:/[A-Za-z0-9_.+-]+)+\Z")
_LOCK_HASH = re.compile(r"[0-9a-f]{64}\Z")
_NOT_A_NUMBER = re.compile(r"[a-df]")
# The CLI sorts the lock's keys with ``localeCompare`` (ICU, locale en-US). For
# these characters that is: every character has its own primary weight, in this
# order, letters compared without case first; then, if all primary weights are
# equal, lower case before upper case (tests/test_narrowed_lock.py checks it against node).
_PRIMARY = "_-./+0123456789abcdefghijklmnopqrstuvwxyz"
# The same weights as characters, so the comparisons run in C: one character
# per weight, in order, a letter's two cases alike; then upper case as "1".
_WEIGHTS = str.maketrans(
    {c: chr(0x21 + i) for i, c in enumerate(_PRIMARY)}
    | {c.upper(): chr(0x21 + i) for i, c in enumerate(_PRIMARY) if c.isalpha()}
)
_CASES = str.maketrans(
    {c: "0" for c in _PRIMARY} | {c.upper(): "1" for c in _PRIMARY if c.isalpha()}
)


def lock_order(key: str) -> tuple[str, str]:
    """Where the CLI puts ``key`` among wmill-lock.yaml's keys (for keys ``_LOCK_KEY`` accepts)."""
    return key.translate(_WEIGHTS), key.translate(_CASES)


def parse_lock(text: str) -> list[tuple[str, str]] | None:
    """The (key, line) pairs of a lock file exactly as the CLI writes it; None for anything else.

    Only the plain form is accepted: a v2 lock, one ``  key: hash`` line per
    entry, keys in the CLI's order, each written as the CLI's YAML writer
    writes it (no quoting, no number-like hash).
    """
    if text == _LOCK_EMPTY:
        return []
    if not text.startswith(_LOCK_HEAD) or not text.endswith("\n") or text == _LOCK_HEAD:
        return None
    pairs: list[tuple[str, str]] = []
    previous: tuple[str, str] | None = None
    for line in text[len(_LOCK_HEAD) : -1].split("\n"):
        key, sep, value = line[2:].partition(": ")
        if (
            not line.startswith("  ")
            or not sep
            or len(key) > 500
            or not _LOCK_KEY.match(key)
            or not _LOCK_HASH.match(value)
            or not _NOT_A_NUMBER.search(value)
        ):
            return None
        order = lock_order(key)
        if previous is not None and order <= previous:
            return None  # not the CLI's order (or a duplicate key)
        previous = order
        pairs.append((key, line))
    return pairs


@dataclass(frozen=True)
class LockSplit:
    """The export's wmill-lock.yaml split into the changed items' entries and the rest.

    The CLI parses and rewrites the whole lock file on every pull, at a cost
    that grows faster than the file (0.7 s of a narrowed pull's 1.3 s at
    1000 items). But it only reads and writes the entries of the items it
    pulls: ``P`` and ``P+sub`` for a script, ``P.flow+sub``, ``P.app+sub``
    (and the ``./`` forms). So the scratch directory gets a lock file with
    the entries whose item path is one of the changed items' (and every entry
    outside ``f/`` and ``u/``), and what the CLI leaves there is merged back
    in the CLI's order (``merge``). Anything not in the plain form the CLI
    writes keeps the whole lock file in the scratch directory.
    """

    kept: tuple[tuple[str, str], ...]  # the other entries: (key, line), in order
    narrowed: tuple[tuple[str, str], ...]  # the changed items' entries
    paths: frozenset[str]

    @classmethod
    def of(cls, export_dir: Path, items: Iterable[Item]) -> LockSplit | None:
        try:
            text = (export_dir / LOCK_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        pairs = parse_lock(text)
        if pairs is None:
            return None
        paths = frozenset(path for _, path in items)
        kept = tuple(p for p in pairs if not _lock_entry_of(p[0], paths))
        narrowed = tuple(p for p in pairs if _lock_entry_of(p[0], paths))
        return cls(kept, narrowed, paths)

    def narrowed_text(self) -> str:
        return _lock_text(self.narrowed)

    def merge(self, scratch_lock: Path) -> str | None:
        """The export's lock file after the narrowed pull; None if the CLI wrote anything else."""
        try:
            pairs = parse_lock(scratch_lock.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        if pairs is None or not all(_lock_entry_of(key, self.paths) for key, _ in pairs):
            return None
        return _lock_text(sorted((*self.kept, *pairs), key=lambda p: lock_order(p[0])))


def _lock_entry_of(key: str, paths: frozenset[str]) -> bool:
    """True if ``key`` belongs to an item at one of ``paths`` (or lies outside f/ and u/)."""
    bare = key.removeprefix("./")
    if not bare.startswith(("f/", "u/")):
        return True
    return bare.split("+", 1)[0].split(".", 1)[0] in paths


def _lock_text(pairs: Iterable[tuple[str, str]]) -> str:
    lines = [line for _, line in pairs]
    return _LOCK_HEAD + "".join(f"{line}\n" for line in lines) if lines else _LOCK_EMPTY
