"""What the repository itself declares: setup.cfg's metadata and the Dockerfile's labels.

Read from the files, never from the installed package, so a test can hold
what runs against what the repository says.
"""

from __future__ import annotations

import configparser
import json
import re

from tests.servers.service_process import REPO_ROOT


def metadata() -> dict[str, str]:
    """setup.cfg's [metadata] section (name, version, description, license, ...)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO_ROOT / "setup.cfg")
    return dict(parser["metadata"])


def _dockerfile_instructions() -> list[str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    # Continuation lines joined, comments dropped: one instruction per item.
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in "\n".join(lines).replace("\\\n", " ").splitlines() if i.strip()]


def final_stage_args() -> dict[str, str]:
    """The ARG defaults of the Dockerfile's last stage (where the labels are)."""
    instructions = _dockerfile_instructions()
    last_from = max(i for i, line in enumerate(instructions) if line.startswith("FROM "))
    args: dict[str, str] = {}
    for line in instructions[last_from:]:
        found = re.fullmatch(r'ARG (\w+)(?:=(?:"([^"]*)"|(\S*)))?', line)
        if found:
            args[found.group(1)] = found.group(2) or found.group(3) or ""
    return args


def dockerfile_labels(**build_args: str) -> dict[str, str]:
    """The LABELs as a build with these arguments (else the defaults) sets them."""
    values = {**final_stage_args(), **build_args}
    labels: dict[str, str] = {}
    for line in _dockerfile_instructions():
        if line.startswith("LABEL "):
            for key, value in re.findall(r'([\w.-]+)="([^"]*)"', line):
                labels[key] = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], value)
    return labels


def pinned_cli_version() -> str:
    """The windmill-cli version package.json pins (and package-lock.json locks)."""
    pinned = json.loads((REPO_ROOT / "package.json").read_text())["dependencies"]["windmill-cli"]
    lock = json.loads((REPO_ROOT / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/windmill-cli"]["version"]
    assert pinned == locked, f"package.json pins {pinned}, package-lock.json has {locked}"
    assert isinstance(pinned, str)
    return pinned
