"""mirror.py on a real filesystem: what an export may hold, and what copying it touches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gitsync.errors import UnsafeExportError
from gitsync.windmill.mirror import mirror, scan_export, write_file
from tests.conftest import files_under


def make(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


EXPORT = {
    "wmill.yaml": b"defaultTs: bun\n",
    "wmill-lock.yaml": b"version: v2\n",
    "f/team/job.py": b"def main(): pass\n",
    "f/team/job.script.yaml": b"summary: job\n",
    "f/team/deep/a/b.flow/flow.yaml": b"value: {}\n",
    "u/alice/hello.ts": b"export async function main() {}\n",
    "pg.resource-type.yaml": b"schema: {}\n",
}


def test_scan_lists_every_file_with_its_path(tmp_path: Path) -> None:
    root = make(tmp_path / "export", EXPORT)

    found = scan_export(root)

    assert sorted(found) == sorted(EXPORT)
    assert all(Path(found[rel]) == root / rel for rel in EXPORT)


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        (lambda r: (r / "f" / "link").symlink_to("/etc"), "symbolic link (f/link)"),
        (lambda r: (r / "f" / "team" / "x.py").symlink_to("/etc/passwd"), "symbolic link"),
        (lambda r: (r / "f" / "dangling.py").symlink_to(r / "nowhere"), "symbolic link"),
        (lambda r: os.mkfifo(r / "f" / "pipe.py"), "non-regular file (f/pipe.py)"),
        (lambda r: (r / "notes.txt").write_text("x"), "unexpected file (notes.txt)"),
        (lambda r: (r / "f" / ".git").mkdir(), "unsafe file name ('.git')"),
        (lambda r: (r / "f" / "a\nb.py").write_text("x"), "unsafe file name"),
        (lambda r: (r / "f" / "a\\b.py").write_text("x"), "unsafe file name"),
    ],
)
def test_scan_refuses_what_a_workspace_export_never_holds(
    tmp_path: Path, plant: object, message: str
) -> None:
    root = make(tmp_path / "export", EXPORT)
    plant(root)  # type: ignore[operator]

    with pytest.raises(UnsafeExportError) as caught:
        scan_export(root)

    assert message in str(caught.value)


def test_scan_refuses_too_many_files(tmp_path: Path) -> None:
    root = make(tmp_path / "export", {f"f/x/{i}.py": b"" for i in range(11)})

    with pytest.raises(UnsafeExportError, match="more than 10 files"):
        scan_export(root, max_files=10)


def test_mirror_makes_managed_files_the_export_and_leaves_the_rest(tmp_path: Path) -> None:
    export = make(tmp_path / "export", EXPORT)
    work = make(
        tmp_path / "work",
        {
            "README.md": b"a person's notes\n",
            ".github/workflows/ci.yml": b"on: push\n",
            "docs/extra.md": b"kept\n",
            "f/team/job.py": b"def main(): 1234\n",  # same size, other bytes
            "f/team/gone.py": b"deleted in Windmill\n",
            "f/old/only.py": b"its folder goes too\n",
            "wmill-lock.yaml": b"version: v1 and longer\n",
        },
    )

    mirror(scan_export(export), work)

    assert files_under(work) == {
        **EXPORT,
        "README.md": b"a person's notes\n",
        ".github/workflows/ci.yml": b"on: push\n",
        "docs/extra.md": b"kept\n",
    }
    assert not (work / "f" / "old").exists()


def test_mirror_leaves_identical_files_alone(tmp_path: Path) -> None:
    export = make(tmp_path / "export", EXPORT)
    work = make(tmp_path / "work", EXPORT)
    before = {rel: (work / rel).stat() for rel in EXPORT}

    mirror(scan_export(export), work)

    after = {rel: (work / rel).stat() for rel in EXPORT}
    assert {rel: (s.st_ino, s.st_mtime_ns) for rel, s in after.items()} == {
        rel: (s.st_ino, s.st_mtime_ns) for rel, s in before.items()
    }


def test_mirror_replaces_links_and_wrong_kinds_without_following_them(tmp_path: Path) -> None:
    outside = make(tmp_path / "outside", {"secret.txt": b"untouched\n", "dir/keep": b"k\n"})
    export = make(tmp_path / "export", EXPORT)
    work = tmp_path / "work"
    (work / "f" / "team").mkdir(parents=True)
    # What a hostile remote's checkout could hold where the export has files.
    (work / "f" / "team" / "job.py").symlink_to(outside / "secret.txt")
    (work / "u").symlink_to(outside / "dir")
    (work / "wmill.yaml").mkdir()
    (work / "wmill.yaml" / "inner").write_text("a directory where a file goes")
    (work / "f" / "team" / "deep").write_text("a file where a directory goes")

    mirror(scan_export(export), work)

    assert files_under(work) == EXPORT
    assert not any(p.is_symlink() for p in work.rglob("*"))
    assert files_under(outside) == {"secret.txt": b"untouched\n", "dir/keep": b"k\n"}


def test_mirror_under_a_prefix_touches_only_the_prefix(tmp_path: Path) -> None:
    export = make(tmp_path / "export", EXPORT)
    work = make(tmp_path / "work", {"f/root.py": b"another workspace's file\n"})

    mirror(scan_export(export), work, "teams/alpha")

    assert files_under(work) == {
        "f/root.py": b"another workspace's file\n",
        **{f"teams/alpha/{rel}": data for rel, data in EXPORT.items()},
    }


def test_write_file_does_not_write_through_a_link(tmp_path: Path) -> None:
    outside = make(tmp_path / "outside", {"target.md": b"theirs\n"})
    root = tmp_path / "work"
    root.mkdir()
    (root / "README.md").symlink_to(outside / "target.md")

    write_file(root, "README.md", b"ours\n")

    assert not (root / "README.md").is_symlink()
    assert (root / "README.md").read_bytes() == b"ours\n"
    assert (outside / "target.md").read_bytes() == b"theirs\n"
