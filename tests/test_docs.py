"""The documentation a newcomer reads: the README is a front door whose links all resolve.

Every relative link in the README, docs/ and the project files must name a file
that exists and, with a ``#fragment``, a heading in it (GitHub's anchors).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.servers.service_process import REPO_ROOT

PAGES = sorted(
    [
        REPO_ROOT / "README.md",
        REPO_ROOT / "CONTRIBUTING.md",
        REPO_ROOT / "SECURITY.md",
        REPO_ROOT / "CHANGELOG.md",
        *(REPO_ROOT / "docs").glob("*.md"),
    ]
)
_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def prose(markdown: str) -> str:
    """The text outside code blocks and inline code, where links live."""
    return _INLINE_CODE.sub("", _FENCE.sub("", markdown))


def links(markdown: str) -> list[str]:
    text = prose(markdown)
    return _LINK.findall(text) + _REFERENCE.findall(text)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading ids: lowercased, punctuation dropped, spaces to hyphens, -1 for repeats."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", markdown), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    return [t for t in links(page.read_text()) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists() or REPO_ROOT not in (dest, *dest.parents):
            broken.append(f"{target}: no such file in the repository")
        elif fragment and (dest.suffix != ".md" or fragment not in anchors(dest.read_text())):
            broken.append(f"{target}: no heading #{fragment} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (REPO_ROOT / t.partition("#")[0]).resolve() for t in relative_links(REPO_ROOT / "README.md")
    }
    unlinked = [p.name for p in (REPO_ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"
    for name in ("LICENSE", "CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md"):
        assert (REPO_ROOT / name).resolve() in linked, f"the README does not link to {name}"


def test_the_readme_is_a_front_door() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "the reference belongs in docs/"
    for command in ("make run", "make test"):
        assert command in readme


def test_the_link_checker_catches_what_it_should(tmp_path: Path) -> None:
    """The checker itself: a broken file, a broken anchor, links in code ignored."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A title\n\n## `POST /sync`\n\n[ok](#post-sync) [ok](#a-title) [bad](#nope)\n"
        "[file](missing.md) `[code](ignored.md)`\n\n```\n[block](ignored.md)\n```\n"
    )
    assert anchors(page.read_text()) == {"a-title", "post-sync"}
    assert relative_links(page) == ["#post-sync", "#a-title", "#nope", "missing.md"]
