"""The tree tells the architecture: a core that knows nothing of HTTP, imports flowing one way.

Read from the code itself (its imports, by ``ast``), so the rule cannot drift
from what the modules do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gitsync"
# Each folder's place: a module may import its own folder and those below it.
LAYERS = {
    "cli": 7,
    "__main__": 7,
    "web": 6,
    "jobs": 5,
    "backup": 4,
    "recovery": 4,
    "inputs": 4,
    "secretscan": 3,
    "ops": 3,
    "windmill": 2,
    "git": 1,
    "targets": 0,
    "config": 0,
    "errors": 0,
    "secrets": 0,
    "deadline": 0,
    "tls": 0,
    "retry": 0,
    "version": 0,
    "__init__": 0,
}
HTTP = ("flask", "werkzeug", "waitress", "gitsync.web")
# The command line sits above the web layer: ``serve`` starts its server, and that is all.
ENTRY_POINTS = {"cli": ("gitsync.web.server",)}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def folder(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
    return found


@pytest.mark.parametrize(
    "path", [p for p in modules() if folder(p) != "web"], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_the_core_knows_nothing_of_http(path: Path) -> None:
    allowed = ENTRY_POINTS.get(folder(path), ())
    for name in imports(path):
        assert name in allowed or not name.startswith(HTTP), f"{path.name} imports {name}"
    assert "http_status" not in path.read_text()


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    mine = LAYERS[folder(path)]
    for name in imports(path):
        if name.startswith("gitsync."):
            theirs = LAYERS[name.split(".")[1]]
            assert theirs <= mine, f"{path.relative_to(PACKAGE)} imports {name}, a layer above"


def test_every_folder_says_its_job_in_a_sentence() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.strip().endswith("."), init
