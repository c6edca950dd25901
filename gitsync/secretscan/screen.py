"""The screen in front of the scanner: which changed files could hold a finding at all.

The keyed detectors are line regexes: a file none of them matches, in any
line the scanner would read, cannot hold a finding, and skips the scanner's
per-file work (its filters: about 5 ms a file, most of a first sync's scan).

Matching costs about 0.7 µs a byte, and Windmill rewrites one large file on
nearly every change: ``wmill-lock.yaml`` (130 KB at 1000 items, 650 KB at
5000), whose screen was most of the cost of backing up one script. So for a
large file the screen remembers the lines it last found clean (their keyed
hashes, per file on disk) and matches only the lines that are new since:
the detectors match within a line, so a line that was clean is clean still,
and the answer is the one matching the whole file would give.

The first change after a start (or after a first sync that did not rewrite
the lock file) would still match all of it, on the sync's own time: so
after each sync's answer the service has the screen ``learn`` the lock file
as it stands (backup/service.py).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.transformers import get_transformed_file
from detect_secrets.util.filetype import FileType, determine_file_type

# Files smaller than this are matched whole: it costs under 10 ms.
REMEMBER_FROM_BYTES = 16 * 1024
# The remembered files' sizes, all told (their hashes take about half that).
REMEMBER_AT_MOST_BYTES = 16 * 1024 * 1024
# Files learn() found not clean, kept so as not to screen them again unchanged.
_AT_MOST_NOT_CLEAN = 1024


@dataclass(frozen=True)
class _Clean:
    """A file's lines the last time it was screened clean."""

    lines: frozenset[int]  # hash() of each line: keyed per process, so not forgeable
    size: int
    keyword: bool  # _KEYWORD and _LONG_VALUE matched somewhere in it
    long_value: bool


_NOTHING_KNOWN = _Clean(frozenset(), 0, keyword=False, long_value=False)


class Screen:
    """The detectors' own regexes, made to work on a whole file; shared by concurrent syncs."""

    def __init__(self, names: tuple[str, ...], ours: tuple[Any, ...]) -> None:
        # detect-secrets ships no type hints: its classes are Any here.
        plugin_classes: list[Any] = list(get_mapping_from_secret_type_to_class().values())
        classes: dict[str, Any] = {c.__name__: c for c in plugin_classes}
        by_flags: dict[int, list[str]] = {}
        for cls in [classes[name] for name in names] + list(ours):
            for pattern in cls().denylist:
                by_flags.setdefault(pattern.flags, []).append(pattern.pattern)
        # MULTILINE: a pattern anchored to a line's start or end still is.
        self._patterns = [
            re.compile("|".join(f"(?:{p})" for p in patterns), flags | re.MULTILINE)
            for flags, patterns in by_flags.items()
        ]
        self._clean: OrderedDict[str, _Clean] = OrderedDict()
        self._not_clean: dict[str, tuple[int, int, int]] = {}  # learn(): (size, mtime, inode)
        self._lock = threading.Lock()

    def may_hold_a_secret(self, path: str) -> bool:
        """Whether a detector's regex matches any line the scanner would read in ``path``.

        The lines are the scanner's own: it decodes YAML (``"\\x67hp_…"`` is a
        GitHub token there) and reads config-like files as key = "value", so
        matching the raw text alone could miss what it finds. The raw text is
        matched first (most files stop there); a YAML file is parsed only when
        parsing could make a match (an escape, or a pattern that needs quotes
        the parser adds); other files are read as the scanner reads them.
        """
        try:
            with open(path) as handle:
                raw = handle.read()
        except UnicodeDecodeError:
            return False  # the scanner skips files that are not text, too
        lines = raw.split("\n")
        known = self._recall(path) if len(raw) >= REMEMBER_FROM_BYTES else None
        if known is None:
            known, fresh = _NOTHING_KNOWN, raw
        else:
            fresh = "\n".join(s for s in lines if hash(s) not in known.lines)
        keyword = known.keyword or _KEYWORD.search(fresh) is not None
        long_value = known.long_value or _LONG_VALUE.search(fresh) is not None
        if self._matches(fresh):
            return True
        if determine_file_type(path) == FileType.YAML and not (
            _may_change_on_parsing(fresh) or (keyword and long_value)
        ):
            self._remember(path, lines, len(raw), keyword, long_value)
            return False
        with open(path) as handle:
            passes = [get_transformed_file(handle)]  # type: ignore[arg-type]
            handle.seek(0)
            passes.append(get_transformed_file(handle, use_eager_transformers=True))  # type: ignore[arg-type]
        if any(self._matches("\n".join(read)) for read in passes if read):
            return True
        self._remember(path, lines, len(raw), keyword, long_value)
        return False

    def learn(self, path: str) -> None:
        """Screen a large file as it stands, so that its next change is matched line by line.

        Safe while the file is being rewritten: whatever is read, a line is
        remembered only as the line it is, and a line's match is its own.
        """
        try:
            stat = os.stat(path)
        except OSError:
            return  # gone, or not readable: nothing to learn
        version = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            # A file that was not clean is learned again only once it changed:
            # a lock file naming a private index with its credentials would
            # otherwise be screened whole after every answer.
            if path in self._clean or self._not_clean.get(path) == version:
                return
        if stat.st_size < REMEMBER_FROM_BYTES:
            return
        try:
            clean = not self.may_hold_a_secret(path)
        except OSError:
            return
        if not clean:
            with self._lock:
                if len(self._not_clean) >= _AT_MOST_NOT_CLEAN:
                    self._not_clean.clear()
                self._not_clean[path] = version

    def knows(self, path: str) -> bool:
        """Whether ``path`` was last screened clean and is remembered."""
        with self._lock:
            return path in self._clean

    def _matches(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self._patterns)

    def _recall(self, path: str) -> _Clean | None:
        with self._lock:
            known = self._clean.pop(path, None)  # taken out until screened clean again
            return known

    def _remember(
        self, path: str, lines: list[str], size: int, keyword: bool, long_value: bool
    ) -> None:
        if size < REMEMBER_FROM_BYTES:
            return
        clean = _Clean(frozenset(hash(s) for s in lines), size, keyword, long_value)
        with self._lock:
            self._clean[path] = clean
            total = sum(c.size for c in self._clean.values())
            while total > REMEMBER_AT_MOST_BYTES:
                _, oldest = self._clean.popitem(last=False)
                total -= oldest.size


def _may_change_on_parsing(text: str) -> bool:
    """Whether the scanner's YAML parsing could make a match these lines lack.

    Parsed, a YAML value is the raw text less its quoting, on its key's line.
    What can differ: escapes and line continuations (a backslash), tags
    (``!!binary``), anchors (an alias's value read under another key), and
    a pattern that needs the double quotes the parser puts around every
    value; all of them show within a line. (The keyword patterns, whose key
    and value the parser brings onto one line when the value was written on
    the next, are the caller's: a keyword and a long value anywhere in the
    file.)
    """
    return (
        "\\" in text
        or "!!" in text
        or _ANCHOR.search(text) is not None
        or _QUOTED_ON_PARSING.search(text) is not None
    )


_ANCHOR = re.compile(r"(?:^|[\s:\-\[,{])&[^\s,\]}]+", re.MULTILINE)
# An AWS secret key ("…" or '…' around 40 characters), an Artifactory token
# (" before it): written with the quotes optional.
_QUOTED_ON_PARSING = re.compile(
    r"aws.{0,20}?(?:key|pwd|pw|password|pass|token).{0,20}?[\'\"]?[0-9a-zA-Z/+]{40}"
    r"|(?:AKC[a-zA-Z0-9]{10,}|AP[\dABCDEF][a-zA-Z0-9]{8,})",
    re.IGNORECASE,
)
# The Cloudant, IBM and SoftLayer patterns: a keyword, then a value of 24
# characters or more.
_KEYWORD = re.compile(r"key|pwd|pw|pass|token", re.IGNORECASE)
_LONG_VALUE = re.compile(r"[a-zA-Z0-9_\-]{24,}")
