"""A backup repository with a history: a few hundred commits, as months of hourly backups leave.

Built with ``git fast-import`` straight into a bare repository: the first
commit holds the whole export, each later one edits two script files (as a
day of work in the workspace would), and the last restores them, so the tip
is exactly the export the workspace gives today.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.servers.git_server import init_bare_repo

_IDENTITY = b"Windmill Git Sync <windmill@example.com>"
_START = 1_700_000_000
_CODE_SUFFIXES = (".py", ".ts", ".sh", ".go", ".sql")


def _quote(path: str) -> bytes:
    return b'"' + path.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def _data(content: bytes) -> bytes:
    return b"data %d\n" % len(content) + content + b"\n"


def build_history(repo: Path, export: Path, commits: int, branch: str = "main") -> int:
    """Create ``repo``: ``commits`` commits whose tip is ``export``. Returns the file count."""
    files = {
        p.relative_to(export).as_posix(): p.read_bytes()
        for p in sorted(export.rglob("*"))
        if p.is_file()
    }
    code = [path for path in files if path.endswith(_CODE_SUFFIXES)] or list(files)
    init_bare_repo(repo, branch=branch)
    proc = subprocess.Popen(
        ["git", "--git-dir", str(repo), "fast-import", "--quiet", "--done"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stdin is not None
    out = proc.stdin
    edited: set[str] = set()

    def commit(number: int, message: str, changes: dict[str, bytes]) -> None:
        when = b"%d +0000" % (_START + number * 3600)
        out.write(b"commit refs/heads/" + branch.encode() + b"\n")
        out.write(b"committer " + _IDENTITY + b" " + when + b"\n")
        out.write(_data(message.encode()))
        for path, content in changes.items():
            out.write(b"M 100644 inline " + _quote(path) + b"\n" + _data(content))

    commit(0, "Initial backup", files)
    for number in range(1, commits - 1):
        changes = {}
        for k in range(2):
            path = code[(number * 2 + k) % len(code)]
            changes[path] = files[path] + b"\n// revision %d\n" % number
            edited.add(path)
        commit(number, f"Hourly backup {number}", changes)
    if commits > 1:
        commit(commits - 1, "Hourly backup", {path: files[path] for path in sorted(edited)})
    out.write(b"done\n")
    out.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    subprocess.run(
        ["git", "--git-dir", str(repo), "gc", "--quiet"], check=True, stdout=subprocess.DEVNULL
    )
    return len(files)
