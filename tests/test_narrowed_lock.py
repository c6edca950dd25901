"""The narrowed pull's wmill-lock.yaml: only the changed items' entries go to the CLI.

The differential test (test_narrowed_pull.py) proves the merged lock file
equal to a full pull's; these check the pieces it rests on: the CLI's key
order (``localeCompare`` in node, run here for real) and the plain form.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from gitsync.windmill import narrow_lock

ALPHABET = "abcXYZ019_-./+"


def node_order(keys: list[str]) -> list[str]:
    """The keys as the CLI sorts them: localeCompare, with the service's environment's locale."""
    script = (
        "const keys = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "keys.sort((a, b) => a.localeCompare(b));"
        "process.stdout.write(JSON.stringify(keys));"
    )
    out = subprocess.run(
        ["node", "-e", script],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    result: list[str] = json.loads(out.stdout)
    return result


def test_lock_order_is_the_clis_order() -> None:
    rng = random.Random(25)  # noqa: S311 - test data, not crypto
    keys = {"f/a/b", "f/a/B", "f/a/b_c", "f/a/b-c", "f/a/b.flow+x", "f/a/b+__script_hash"}
    keys |= {"f/a/b/c", "f/a/b0", "f/a/Ba", "f/a/bA", "u/x/y", "./f/a/b"}
    while len(keys) < 3000:
        segments = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 6))) for _ in "ab"]
        keys.add(rng.choice(["f/", "u/", "./f/"]) + "/".join(segments))
    assert sorted(keys, key=narrow_lock.lock_order) == node_order(sorted(keys))


def lock_text(keys: list[str]) -> str:
    lines = "".join(f"  {k}: {'ab' * 32}\n" for k in sorted(keys, key=narrow_lock.lock_order))
    return "version: v2\nlocks:\n" + lines


def test_the_changed_items_entries_are_split_off_and_merged_back(tmp_path: Path) -> None:
    keys = ["f/a/s", "f/a/s+__script_hash", "f/a/s_2", "f/a/f.flow+__flow_hash", "f/a/s/inner"]
    (tmp_path / narrow_lock.LOCK_FILE).write_text(lock_text(keys))
    split = narrow_lock.LockSplit.of(tmp_path, [("script", "f/a/s"), ("flow", "f/a/f")])
    assert split is not None
    assert split.narrowed_text() == lock_text(
        ["f/a/s", "f/a/s+__script_hash", "f/a/f.flow+__flow_hash"]
    )
    # What the CLI leaves: a new flow step, a script entry rewritten, nothing removed.
    out = tmp_path / "out.yaml"
    cli_keys = ["f/a/s", "f/a/s+__script_hash", "f/a/f.flow+__flow_hash", "f/a/f.flow+new.py"]
    out.write_text(lock_text(cli_keys))
    assert split.merge(out) == lock_text([*keys, "f/a/f.flow+new.py"])
    # An entry of an item the pull was not about: the full pull decides, not a guess.
    out.write_text(lock_text([*cli_keys, "f/a/other"]))
    assert split.merge(out) is None


@pytest.mark.parametrize(
    "text",
    [
        "version: v2\nlocks:\n  f/a/b: 'abab'\n",  # quoted
        "version: v2\nlocks:\n  f/a/b: " + "1" * 63 + "e\n",  # number-like
        lock_text(["f/a/b"]).replace("version: v2", "version: v1"),
        "version: v2\nlocks:\n  f/a/c: " + "ab" * 32 + "\n  f/a/b: " + "ab" * 32 + "\n",  # order
        "version: v2\nlocks:\n  'f/a b': " + "ab" * 32 + "\n",
    ],
)
def test_a_lock_file_not_in_the_clis_plain_form_is_given_whole(tmp_path: Path, text: str) -> None:
    (tmp_path / narrow_lock.LOCK_FILE).write_text(text)
    assert narrow_lock.LockSplit.of(tmp_path, [("script", "f/a/b")]) is None
