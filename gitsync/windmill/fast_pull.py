"""Pulls in linear time: the CLI's own ``wmill-lock.yaml`` batch, applied to its pull.

``wmill sync pull`` (windmill-cli 1.819.0) writes the files, then one
``wmill-lock.yaml`` entry per pulled script, flow inline script and app. For
each entry it re-reads, re-parses, re-sorts and re-writes the whole lock file.
A pull that adds N items therefore costs O(N²): 45 s for 1000 scripts, many
minutes for 5000; that is every first sync of a workspace, and every sync
after an interrupted one. And in a large workspace every changed item costs
a full rewrite of a large lock file: ten changed items take 30 s more than
none at 5000 items.

The CLI has a batch mode for exactly this, ``beginLockfileBatch()`` /
``flushLockfileBatch()``: the lock stays in memory while entries are added,
and the same ``yaml.stringify`` writes it once at the end (``wmill
generate-metadata`` uses it; its pull does not). For such pulls the service
starts node with a module loader hook (``--import``, a ``data:`` URL: nothing
on disk) that wraps the pull's lock-file loop in that batch, ``try``/
``finally`` as ``generate-metadata`` does. The CLI's own functions still
compute every entry and write every file; only the number of times the lock
file is re-read and re-written changes, so the output is the same byte for
byte (tests/test_fast_pull.py compares it with plain pulls, every file
included).

The same hook makes one more edit, of the same kind: on every pull the CLI
parses the YAML of each script's metadata twice (the remote's and the local
copy) to carry over a pending lock, even when the two texts are identical,
where nothing can be carried over. The edit skips that parse for identical
texts (see ``SAME_META``): a no-change pull of 5000 items took 9.9 s instead
of 12.5 s here; at 1000 items the parse is about 0.5 s of CPU.

The hook costs about 0.13 s of node start-up (its loader thread) and 30 MB,
about what the second edit saves at 1000 items, so it is used only where it
clearly pays: a pull into a fresh directory, or one whose lock file is large
enough that a single changed item costs the CLI more than that.

The hook touches nothing but the configured CLI file, and only when every
anchor below occurs in it exactly once; the service checks the same before
adding the hook at all. Any other CLI (a different version, a wrapper
binary) runs unmodified: slower, never different.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from pathlib import Path

log = logging.getLogger(__name__)

# The start and the end of the lock-file loop in `pull` (main.js, line 67720).
BEGIN = (
    '    info("All local changes pulled, now updating wmill-lock.yaml");\n'
    "    await readLockfile();\n"
)
BEGIN_BATCHED = (
    '    info("All local changes pulled, now updating wmill-lock.yaml");\n'
    "    await beginLockfileBatch();\n"
    "    try {\n"
)
END = (
    "      await generateAppLocksInternal(change, false, false, workspace, opts, true, true);\n"
    "    }\n"
    "    if (opts.jsonOutput) {\n"
)
END_BATCHED = (
    "      await generateAppLocksInternal(change, false, false, workspace, opts, true, true);\n"
    "    }\n"
    "    } finally {\n"
    "      await flushLockfileBatch();\n"
    "    }\n"
    "    if (opts.jsonOutput) {\n"
)
# In `preservePendingScriptLocks` (main.js, line 66872), run on every pull:
# for each script's metadata file present both remotely and locally, it
# parses both YAML texts to see whether a local lock must be carried over.
# When the two texts are the same string, every branch after the parse ends
# in `continue` (the same text has the same `lock`: either set, or not a
# string), so skipping the parse changes nothing but its cost.
SAME_META = (
    "    const localMeta = local[metaKey];\n    if (localMeta === undefined)\n      continue;\n"
)
SAME_META_SKIPPED = (
    "    const localMeta = local[metaKey];\n"
    "    if (localMeta === undefined || localMeta === remote[metaKey])\n"
    "      continue;\n"
)
EDITS = ((BEGIN, BEGIN_BATCHED), (END, END_BATCHED), (SAME_META, SAME_META_SKIPPED))
# The batch functions the patch calls must be the CLI's own.
REQUIRED = (
    "async function beginLockfileBatch() {",
    "async function flushLockfileBatch() {",
)

_HOOKS = """\
import { fileURLToPath } from "node:url";
const TARGET = %(target)s;
const EDITS = %(edits)s;
function count(text, part) {
  let n = 0;
  for (let i = text.indexOf(part); i !== -1; i = text.indexOf(part, i + part.length)) n++;
  return n;
}
export async function load(url, context, nextLoad) {
  const result = await nextLoad(url, context);
  if (!url.startsWith("file:") || fileURLToPath(url) !== TARGET) return result;
  let source = typeof result.source === "string"
    ? result.source : Buffer.from(result.source).toString("utf8");
  if (EDITS.some(([from]) => count(source, from) !== 1)) return result;
  for (const [from, to] of EDITS) source = source.replace(from, () => to);
  return { ...result, source };
}
"""

# From this many lock entries on, one changed item costs the plain CLI more
# than the hook does (each entry is one line of wmill-lock.yaml).
LARGE_LOCK_ENTRIES = 2000

_lock = threading.Lock()
_checked: dict[tuple[str, int, int], bool] = {}


def worth_it(export_dir: Path) -> bool:
    """True if a pull into ``export_dir`` should batch its lock-file updates.

    A fresh directory (nothing the CLI pulled, at most our wmill.yaml) gets
    every item at once; a large lock file makes every changed item expensive.
    """
    try:
        with os.scandir(export_dir) as entries:
            names = [entry.name for entry in entries]
    except FileNotFoundError:
        return True
    if all(name == "wmill.yaml" for name in names):
        return True
    try:
        lines = (export_dir / "wmill-lock.yaml").read_bytes().count(b"\n")
    except OSError:
        return False
    return lines >= LARGE_LOCK_ENTRIES


def patchable(cli: Path) -> bool:
    """True if ``cli`` is a CLI bundle the batch hook applies to (each anchor exactly once)."""
    try:
        real = os.path.realpath(cli)
        st = os.stat(real)
    except OSError:
        return False
    key = (real, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _checked:
            return _checked[key]
    try:
        source = Path(real).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        ok = False
    else:
        ok = all(source.count(anchor) == 1 for anchor, _ in EDITS) and all(
            part in source for part in REQUIRED
        )
        del source
    if not ok:
        log.warning(
            "the wmill CLI at %s is not the pinned bundle the batched first pull knows; "
            "first pulls of large workspaces will take the CLI's own (quadratic) time",
            cli,
        )
    with _lock:
        _checked[key] = ok
    return ok


def node_options(cli: Path) -> list[str]:
    """Node arguments that make ``cli``'s pull update wmill-lock.yaml in one batch.

    Empty when the hook does not apply (the CLI then runs as it is).
    """
    if cli.suffix not in (".js", ".mjs") or not patchable(cli):
        return []
    hooks = _HOOKS % {
        "target": json.dumps(os.path.realpath(cli)),
        "edits": json.dumps(EDITS),
    }
    hooks_url = "data:text/javascript," + urllib.parse.quote(hooks)
    # module.register exists from Node 20.6; without it the pull runs unbatched.
    entry = (
        'import * as m from "node:module";\n'
        f'if (typeof m.register === "function") m.register({json.dumps(hooks_url)});\n'
    )
    return ["--import", "data:text/javascript," + urllib.parse.quote(entry)]
