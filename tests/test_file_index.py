"""The export's file index: files unchanged since they were hashed are not read again,
and no change, however it was made, is taken for "unchanged" (git/file_index.py).

Real files on the real file system; the racy window is shortened so the tests
need not wait a second for a file to become trusted.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from gitsync.git.file_index import FileIndex, blob_id

RACY = 0.05


def _settled() -> None:
    """Waits out the racy window, so files written before now are trusted when hashed."""
    time.sleep(RACY * 3)


def _git_blob_id(path: Path) -> str:
    # Real git as an independent judge of the ids (a test-only dependency).
    return subprocess.run(
        ["git", "hash-object", "--no-filters", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    (root / "f" / "team").mkdir(parents=True)
    (root / "f" / "team" / "job.py").write_bytes(b"def main():\n    return 1\n")
    (root / "f" / "team" / "job.script.yaml").write_bytes(b"summary: a job\n")
    (root / "wmill-lock.yaml").write_bytes(b"version: v2\n")
    return root


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): str(p) for p in root.rglob("*") if p.is_file()}


def test_ids_are_gits_and_unchanged_files_are_not_read_again(export: Path, tmp_path: Path) -> None:
    files = _files(export)
    _settled()
    first = FileIndex(RACY)
    ids = {rel: first.blob_id(rel, path) for rel, path in files.items()}
    assert ids == {rel: _git_blob_id(Path(path)).encode() for rel, path in files.items()}
    assert first.hashed == len(files)
    first.save(tmp_path / "index", files)

    again = FileIndex.load(tmp_path / "index", RACY)

    assert {rel: again.blob_id(rel, path) for rel, path in files.items()} == ids
    assert again.hashed == 0


def test_a_same_size_edit_with_its_mtime_put_back_is_seen(export: Path, tmp_path: Path) -> None:
    script = export / "f" / "team" / "job.py"
    files = _files(export)
    _settled()
    index = FileIndex(RACY)
    for rel, path in files.items():
        index.blob_id(rel, path)
    index.save(tmp_path / "index", files)
    before = script.stat()

    script.write_bytes(b"def main():\n    return 2\n")  # same size
    os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert script.stat().st_size == before.st_size
    assert script.stat().st_mtime_ns == before.st_mtime_ns

    loaded = FileIndex.load(tmp_path / "index", RACY)
    assert loaded.cached("f/team/job.py", str(script)) is None  # ctime moved
    assert loaded.blob_id("f/team/job.py", str(script)) == blob_id(script.read_bytes())


def test_a_file_replaced_by_a_rename_is_seen(export: Path, tmp_path: Path) -> None:
    script = export / "f" / "team" / "job.py"
    _settled()
    index = FileIndex(RACY)
    index.blob_id("f/team/job.py", str(script))
    replacement = export / "f" / "team" / "new.tmp"
    replacement.write_bytes(b"def main():\n    return 3\n")
    os.utime(replacement, ns=(script.stat().st_atime_ns, script.stat().st_mtime_ns))
    replacement.replace(script)

    assert index.cached("f/team/job.py", str(script)) is None
    assert index.blob_id("f/team/job.py", str(script)) == blob_id(b"def main():\n    return 3\n")


def test_a_file_written_just_before_it_was_hashed_is_not_trusted(
    export: Path, tmp_path: Path
) -> None:
    script = export / "f" / "team" / "job.py"
    script.write_bytes(b"def main():\n    return 4\n")
    index = FileIndex(RACY)

    index.blob_id("f/team/job.py", str(script))  # within the racy window of its write

    # Another write in the same timestamp tick could leave the stat as it is:
    # the id is not remembered, in memory or on disk.
    assert index.cached("f/team/job.py", str(script)) is None
    index.save(tmp_path / "index", ["f/team/job.py"])
    assert "job.py" not in (tmp_path / "index").read_text()


def test_the_saved_index_is_private_holds_no_content_and_forgets_deleted_files(
    export: Path, tmp_path: Path
) -> None:
    files = _files(export)
    _settled()
    index = FileIndex(RACY)
    for rel, path in files.items():
        index.blob_id(rel, path)
    del files["wmill-lock.yaml"]

    index.save(tmp_path / "index", files)

    text = (tmp_path / "index").read_text()
    assert (tmp_path / "index").stat().st_mode & 0o077 == 0
    assert "return 1" not in text and "a job" not in text
    assert "f/team/job.py" in text and "wmill-lock.yaml" not in text


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not an index\n",
        b"windmill-git-sync file index 1\nnot\tenough\n",
    ],
)
def test_a_missing_or_unreadable_index_means_hashing_everything(
    export: Path, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "index").write_bytes(content)
    index = FileIndex.load(tmp_path / "index", RACY)
    files = _files(export)

    ids = {rel: index.blob_id(rel, path) for rel, path in files.items()}

    assert index.hashed == len(files)
    assert ids == {rel: _git_blob_id(Path(path)).encode() for rel, path in files.items()}


def test_a_link_put_in_a_files_place_is_refused(export: Path, tmp_path: Path) -> None:
    secret = tmp_path / "outside"
    secret.write_text("not the export's")
    script = export / "f" / "team" / "job.py"
    script.unlink()
    script.symlink_to(secret)

    with pytest.raises(OSError):
        FileIndex(RACY).blob_id("f/team/job.py", str(script))


def test_a_damaged_blob_id_in_the_saved_index_is_never_used(export: Path, tmp_path: Path) -> None:
    lock = export / "wmill-lock.yaml"
    _settled()
    index = FileIndex(RACY)
    index.blob_id("wmill-lock.yaml", str(lock))
    index.save(tmp_path / "index", ["wmill-lock.yaml"])
    saved = (tmp_path / "index").read_text()
    good = blob_id(lock.read_bytes()).decode()
    assert good in saved
    # The stat still matches the file: only the id is damaged (a bad disk, say).
    (tmp_path / "index").write_text(saved.replace(good, "z" * 40))

    loaded = FileIndex.load(tmp_path / "index", RACY)

    assert loaded.blob_id("wmill-lock.yaml", str(lock)).decode() == good
    assert loaded.hashed == 1
