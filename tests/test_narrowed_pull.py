"""A narrowed pull writes what a full pull writes, byte for byte, after any change (#25).

The service pulls only the items that changed (backup/narrowed.py, windmill/
narrow.py): it serves the CLI an archive of those items and the global kinds,
restricts the pull with ``--includes``, runs it in a scratch directory holding
only those items' files and moves the results into the export. Here two
exports of one workspace of a few hundred items in the emulator advance side
by side through random sequences of changes of every kind (hypothesis): one
by the unmodified pinned CLI's full pull, run as a user runs it, in place; one
by the service's own code (the same ``choose`` and ``run`` a sync uses, the
skip check's re-fetch of every recorded request included). After every step
the two directories must hold the same files with the same bytes,
wmill-lock.yaml included, and most steps must have been narrowed. A negative
control shows the comparison catches a missing rule. No assertion is about
time.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitsync.backup import narrowed
from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.secrets import Redactor, Secret
from gitsync.windmill import narrow, wmill
from gitsync.windmill.recorder import PassThrough, Request, Upstream
from gitsync.windmill.wmill import Scope, WmillCli
from tests.conftest import WINDMILL_TOKEN, bare_cli_pull, files_under
from tests.servers.service_process import WMILL_CLI
from tests.servers.windmill_emulator import (
    BUN_LOCK,
    PY_LOCK,
    WindmillEmulator,
    Workspace,
    basic_app_value,
    basic_flow_value,
)

# Everything the backup can hold: users, settings (scrubbed by the service
# after each pull, and so here after the reference pull too), secrets as ciphertext.
SCOPE = Scope(include_users=True, include_settings=True, secrets="encrypted")
N_ITEMS = 240
FILE_TYPE_CHANGED = "changed: resources/file_resource_type_to_file_ext_map"
STEPS = 6
TOKEN = Secret(WINDMILL_TOKEN)
LANGUAGES = ("python3", "bun", "deno", "bash", "postgresql", "go")


def seed(ws: Workspace) -> None:
    """A few hundred items, with every case the study calls out."""
    ws.clear()
    ws.seed_synthetic(N_ITEMS, seed=11)
    ws.seed_basic()
    ws.add_workspace_dependency("python3", "requests==2.32.3\n")
    ws.add_script(
        "f/team/with_modules",
        language="python3",
        summary="Script with modules",
        content="from helper import x\n\n\ndef main():\n    return x\n",
        modules={"helper.py": {"content": "x = 1\n", "language": "python3", "lock": None}},
    )
    # A file resource type: its resources get a file of their own.
    ws.add_resource_type(
        "c_json_file", description="JSON file", format_extension="json", schema={"type": "object"}
    )
    ws.add_resource("f/team/config", resource_type="c_json_file", value={"content": '{"a": 1}'})
    # Items at a script's own path (its P.* matches them), and one below it.
    ws.add_schedule("f/team/hello_py", script_path="f/team/hello_py", schedule="0 5 * * * *")
    ws.add_trigger("f/team/hello_py", "http", script_path="f/team/hello_py", route_path="hp")
    ws.add_variable("f/team/hello_py", value="same path")
    ws.add_script("f/team/hello_py/inner", language="bun", content="export const x = 1;\n")
    ws.shared_ui = {"Button.svelte": "<button>ok</button>\n"}


@dataclass
class Model:
    """The workspace as the test changed it, to pick existing items from."""

    ws: Workspace
    counter: int = 0
    applied: list[str] = field(default_factory=list)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}_{self.counter}"

    def pick(self, kind: str, n: int, where: Callable[[str], bool] = lambda p: True) -> str | None:
        paths = [p for p in self.ws.paths(kind) if where(p)]
        if kind == "script":
            paths = [p for p in paths if not self.ws.get("script", p).meta.archived]
        return paths[n % len(paths)] if paths else None

    def folder(self, n: int) -> str:
        return self.pick("folder", n) or "team"


def _script(m: Model, n: int) -> str | None:
    return m.pick("script", n)


# Each change: (name, apply(model, n)). ``n`` picks the item and the variant.
def c_script_edit(m: Model, n: int) -> None:
    if (p := _script(m, n)) is not None:
        item = m.ws.get("script", p)
        m.ws.update(
            "script",
            p,
            content=item.data["content"]
            + f"\n{'#' if item.data['language'] in ('python3', 'bash') else '//'} edit {n}\n",
        )


def c_script_summary(m: Model, n: int) -> None:
    if (p := _script(m, n)) is not None:
        m.ws.update("script", p, summary=f"summary {n}")


def c_script_lock(m: Model, n: int) -> None:
    if (
        p := m.pick(
            "script", n, lambda p: m.ws.get("script", p).data["language"] in ("python3", "bun")
        )
    ) is not None:
        lock = m.ws.get("script", p).data.get("lock")
        language = m.ws.get("script", p).data["language"]
        new = (
            None
            if lock and n % 2
            else (PY_LOCK if language == "python3" else BUN_LOCK) + f"# {n}\n"
        )
        m.ws.update("script", p, lock=new)


def c_script_new(m: Model, n: int) -> None:
    language = LANGUAGES[n % len(LANGUAGES)]
    path = f"f/{m.folder(n)}/{m.fresh('new')}"
    if n % 5 == 0:
        m.ws.add_script(
            path,
            language="python3",
            content="from h import y\n\n\ndef main():\n    return y\n",
            modules={"h.py": {"content": f"y = {n}\n", "language": "python3", "lock": None}},
        )
    else:
        m.ws.add_script(path, language=language, summary=f"new {n}")


def c_script_delete(m: Model, n: int) -> None:
    if (p := _script(m, n)) is not None:
        if n % 2:
            m.ws.remove("script", p)  # archived, as the UI does
        else:
            m.ws.delete("script", p)


def c_script_rename(m: Model, n: int) -> None:
    if (p := _script(m, n)) is not None:
        item = m.ws.get("script", p)
        data = {k: v for k, v in item.data.items()}
        m.ws.delete("script", p)
        if n % 3 == 0:
            data["language"] = "bun"
            data["content"] = "export async function main() {\n  return 1;\n}\n"
            data["lock"] = None
        target = (
            f"f/{m.fresh('moved')}/x" if n % 4 == 0 else f"f/{m.folder(n)}/{m.fresh('renamed')}"
        )
        m.ws.add_script(target, **data)


def c_module_edit(m: Model, n: int) -> None:
    p = m.pick("script", n, lambda p: bool(m.ws.get("script", p).data.get("modules")))
    if p is not None:
        modules = dict(m.ws.get("script", p).data["modules"])
        if n % 3 == 0 and len(modules) > 1:
            modules.pop(sorted(modules)[-1])
        elif n % 3 == 1:
            modules[f"extra_{n}.py"] = {
                "content": f"z = {n}\n",
                "language": "python3",
                "lock": None,
            }
        else:
            first = sorted(modules)[0]
            modules[first] = {**modules[first], "content": f"x = {n}\n"}
        m.ws.update("script", p, modules=modules)


def c_flow(m: Model, n: int) -> None:
    p = m.pick("flow", n)
    variant = n % 5
    if p is None or variant == 0:
        m.ws.add_flow(
            f"f/{m.folder(n)}/{m.fresh('flow')}", summary=f"flow {n}", value=basic_flow_value()
        )
    elif variant == 1:
        m.ws.update("flow", p, summary=f"flow summary {n}")
    elif variant == 2:
        value = json.loads(json.dumps(m.ws.get("flow", p).data["value"]))
        if value.get("modules"):
            value["modules"][0]["value"]["content"] = f"def main(x: int):\n    return {n}\n"
            if n % 2:
                value["modules"][0]["summary"] = f"step {n}"
        m.ws.update("flow", p, value=value)
    elif variant == 3:
        m.ws.delete("flow", p)
    else:
        data = dict(m.ws.get("flow", p).data)
        m.ws.delete("flow", p)
        m.ws.add_flow(f"f/{m.folder(n + 1)}/{m.fresh('flowmoved')}", **data)


def c_app(m: Model, n: int) -> None:
    p = m.pick("app", n)
    variant = n % 3
    if p is None or variant == 0:
        m.ws.add_app(
            f"f/{m.folder(n)}/{m.fresh('app')}", summary=f"app {n}", value=basic_app_value()
        )
    elif variant == 1:
        value = json.loads(json.dumps(m.ws.get("app", p).data["value"]))
        scripts = value.get("hiddenInlineScripts") or []
        if scripts and isinstance(scripts[0].get("inlineScript"), dict):
            scripts[0]["inlineScript"]["content"] = f"def main():\n    return {n}\n"
        m.ws.update("app", p, value=value, summary=f"app summary {n}")
    else:
        m.ws.delete("app", p)


def c_resource(m: Model, n: int) -> None:
    p = m.pick("resource", n, lambda p: m.ws.get("resource", p).data["resource_type"] != "state")
    variant = n % 4
    if p is None or variant == 0:
        if n % 2:
            m.ws.add_resource(
                f"f/{m.folder(n)}/{m.fresh('file')}",
                resource_type="c_json_file",
                value={"content": f'{{"n": {n}}}'},
            )
        else:
            m.ws.add_resource(
                f"f/{m.folder(n)}/{m.fresh('res')}",
                resource_type="c_synth",
                value={"url": f"https://{n}.local"},
            )
    elif variant == 1:
        rt = m.ws.get("resource", p).data["resource_type"]
        value = (
            {"content": f'{{"v": {n}}}'} if rt == "c_json_file" else {"url": f"https://v{n}.local"}
        )
        m.ws.update("resource", p, value=value)
    elif variant == 2:
        m.ws.update("resource", p, description=f"desc {n}")
    else:
        m.ws.delete("resource", p)


def c_variable(m: Model, n: int) -> None:
    p = m.pick("variable", n)
    variant = n % 4
    if p is None or variant == 0:
        m.ws.add_variable(f"f/{m.folder(n)}/{m.fresh('var')}", value=f"v{n}", is_secret=n % 2 == 1)
    elif variant == 1:
        m.ws.update("variable", p, value=f"changed {n}")
    elif variant == 2:
        m.ws.update("variable", p, description=f"var desc {n}")
    else:
        m.ws.delete("variable", p)


def c_resource_type(m: Model, n: int) -> None:
    variant = n % 4
    if variant == 0:
        m.ws.add_resource_type(m.fresh("c_rt"), description=f"rt {n}")
    elif variant == 1:
        m.ws.update("resource_type", "c_synth", description=f"synthetic {n}")
    elif variant == 2:
        m.ws.update(
            "resource_type",
            "c_my_db",
            schema={"type": "object", "properties": {"n": {"type": "integer", "default": n}}},
        )
    else:
        # A file type's layout changes: every resource of it is written anew (a full pull).
        ext = (
            "json"
            if m.ws.get("resource_type", "c_json_file").data["format_extension"] != "json"
            else "txt"
        )
        m.ws.update("resource_type", "c_json_file", format_extension=ext)


def c_folder(m: Model, n: int) -> None:
    variant = n % 4
    if variant == 0:
        m.ws.update("folder", m.folder(n), summary=f"folder {n}")
    elif variant == 1:
        m.ws.add_folder(m.fresh("empty"), summary="new and empty")
    elif variant == 2:
        name = m.fresh("newf")
        m.ws.add_folder(name)
        m.ws.add_script(f"f/{name}/first", language="bun")
    else:
        folders = [f for f in m.ws.paths("folder") if f.startswith(("newf", "empty", "moved"))]
        if folders:
            name = folders[n % len(folders)]
            for kind in (
                "script",
                "flow",
                "app",
                "resource",
                "variable",
                "schedule",
                "http_trigger",
            ):
                for p in m.ws.paths(kind):
                    if p.startswith(f"f/{name}/"):
                        m.ws.delete(kind, p)
            m.ws.delete("folder", name)


def c_schedule(m: Model, n: int) -> None:
    p = m.pick("schedule", n)
    variant = n % 4
    if p is None or variant == 0:
        script = _script(m, n) or "f/team/hello_py"
        # At the script's own path: the script's P.* matches it.
        m.ws.add_schedule(
            script if n % 2 else f"f/{m.folder(n)}/{m.fresh('sched')}",
            script_path=script,
            schedule=f"0 {n % 60} * * * *",
        )
    elif variant == 1:
        m.ws.update("schedule", p, schedule=f"0 {n % 60} 1 * * *")
    elif variant == 2:
        m.ws.update("schedule", p, enabled=not m.ws.get("schedule", p).data["enabled"])
    else:
        m.ws.delete("schedule", p)


def c_trigger(m: Model, n: int) -> None:
    p = m.pick("http_trigger", n)
    variant = n % 3
    if p is None or variant == 0:
        script = _script(m, n) or "f/team/hello_py"
        m.ws.add_trigger(
            script if n % 2 else f"f/{m.folder(n)}/{m.fresh('hook')}",
            "http",
            script_path=script,
            route_path=f"r{n}",
        )
    elif variant == 1:
        m.ws.update("http_trigger", p, route_path=f"changed{n}", route_path_key=f"changed{n}")
    else:
        m.ws.delete("http_trigger", p)


def c_globals(m: Model, n: int) -> None:
    variant = n % 6
    if variant == 0:
        m.ws.add_user(m.fresh("user"), role="developer")
    elif variant == 1:
        m.ws.update(
            "user",
            "bob",
            role="admin" if m.ws.get("user", "bob").data["role"] != "admin" else "developer",
        )
    elif variant == 2:
        m.ws.add_group(
            "devs",
            summary=f"Developers {n}",
            members=["bob"] if n % 2 else ["carol"],
            admins=["admin"],
        )
    elif variant == 3:
        m.ws.set_settings({"color": f"#{n % 256:02x}0000"})
    elif variant == 4:
        m.ws.add_workspace_dependency("python3", f"requests==2.{n}.0\n")
    else:
        m.ws.shared_ui = {
            "Button.svelte": f"<button>{n}</button>\n",
            **({"Card.svelte": "<div/>\n"} if n % 2 else {}),
        }
        m.ws._changed()


CHANGES: dict[str, Callable[[Model, int], None]] = {
    f.__name__.removeprefix("c_"): f
    for f in (
        c_script_edit,
        c_script_summary,
        c_script_lock,
        c_script_new,
        c_script_delete,
        c_script_rename,
        c_module_edit,
        c_flow,
        c_app,
        c_resource,
        c_variable,
        c_resource_type,
        c_folder,
        c_schedule,
        c_trigger,
        c_globals,
    )
}
change = st.tuples(st.sampled_from(sorted(CHANGES)), st.integers(0, 10_000))
steps = st.lists(st.lists(change, min_size=1, max_size=4), min_size=STEPS, max_size=STEPS)


def reference_pull(windmill: WindmillEmulator, workspace_id: str, dest: Path) -> None:
    """The unmodified pinned CLI's full pull, in place, as a user runs it (then the scrub)."""
    bare_cli_pull(windmill, workspace_id, dest, SCOPE.wmill_yaml())
    wmill.scrub_settings(dest / "settings.yaml")


class ServiceSide:
    """The service's pull, narrowed when it can be: backup/narrowed.py as steps.py drives it."""

    def __init__(self, windmill: WindmillEmulator, workspace_id: str, root: Path) -> None:
        self.settings = Settings(
            windmill_base_url=windmill.base_url, wmill_cli=WMILL_CLI, data_dir=root
        )
        self.workspace_id = workspace_id
        self.root = root
        self.export = root / "export"
        self.upstream = Upstream(windmill.base_url, extra_ca=None)
        self.cli = WmillCli(self.settings)
        self.state: narrowed.NarrowState | None = None
        self.modes: list[str] = []

    def _cli_pull(self, directory: Path, url: str, includes: tuple[str, ...] = ()) -> None:
        self.cli.pull(
            workspace=self.workspace_id,
            token=TOKEN,
            export_dir=directory,
            scope=SCOPE,
            deadline=Deadline(600),
            redactor=Redactor([TOKEN], []),
            windmill_url=url,
            includes=includes,
        )

    def full(self, replay: dict[Request, Any]) -> None:
        passthrough = PassThrough(self.upstream, replay, 60)
        with passthrough.running():
            self._cli_pull(self.export, passthrough.url)
        self.state = narrowed.NarrowState.remember(self.root, passthrough.exchanges(), 0.0)

    def pull(self) -> str:
        """One sync's pull; which kind it was ("narrowed" or the full pull's reason)."""
        assert self.state is not None
        # The skip check's replay: every recorded request fetched again.
        replay = {
            (r := Request.from_json(json.loads(key))): self.upstream.fetch_with_token(r, TOKEN, 60)
            for key in self.state.exchanges
        }
        choice = narrowed.choose(self.settings, self.state, replay, SCOPE, now=1.0)
        if isinstance(choice, str):
            self.full(replay)
            mode = choice
        else:
            exchanges = narrowed.run(
                choice,
                upstream=self.upstream,
                replay=replay,
                timeout=60,
                root=self.root,
                export_dir=self.export,
                pull=lambda d, pt: self._cli_pull(d, pt.url, choice.plan.includes),
            )
            assert exchanges is not None, "the narrowed pull asked for something unplanned"
            self.state = narrowed.NarrowState.remember(self.root, exchanges, 0.0)
            mode = "narrowed"
        self.modes.append(mode)
        return mode


def assert_same_tree(narrowed_dir: Path, full_dir: Path, context: str) -> None:
    a, b = files_under(narrowed_dir), files_under(full_dir)
    assert sorted(a) == sorted(b), (
        f"{context}: only in the narrowed export: {sorted(a.keys() - b.keys())[:20]}; "
        f"only in the full one: {sorted(b.keys() - a.keys())[:20]}"
    )
    differing = [path for path in sorted(a) if a[path] != b[path]]
    assert not differing, f"{context}: files that differ: {differing[:20]}"


@pytest.fixture(scope="module")
def pristine(
    windmill: WindmillEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, narrowed.NarrowState]]:
    """The seeded workspace's first full pull (the service's) and its narrowed-pull state."""
    workspace_id = "narrowed-pull"
    seed(windmill.workspace(workspace_id))
    root = tmp_path_factory.mktemp("pristine")
    side = ServiceSide(windmill, workspace_id, root)
    side.full({})
    assert side.state is not None
    yield workspace_id, side.export, side.state


def start(
    windmill: WindmillEmulator, pristine: tuple[str, Path, narrowed.NarrowState], base: Path
) -> tuple[ServiceSide, Path]:
    workspace_id, export, state = pristine
    seed(windmill.workspace(workspace_id))
    if base.exists():
        shutil.rmtree(base)
    side = ServiceSide(windmill, workspace_id, base / "service")
    shutil.copytree(export, side.export, symlinks=True)
    side.state = state
    full = base / "full"
    shutil.copytree(export, full, symlinks=True)
    return side, full


@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=steps)
def test_narrowed_pulls_write_what_full_pulls_write(
    windmill: WindmillEmulator,
    pristine: tuple[str, Path, narrowed.NarrowState],
    tmp_path: Path,
    steps: list[list[tuple[str, int]]],
) -> None:
    side, full = start(windmill, pristine, tmp_path / "run")
    model = Model(windmill.workspace(side.workspace_id))
    for number, changes in enumerate(steps, 1):
        for name, n in changes:
            CHANGES[name](model, n)
        mode = side.pull()
        reference_pull(windmill, side.workspace_id, full)
        assert_same_tree(side.export, full, f"step {number} ({mode}) after {changes}")
    # Most steps are narrowed (a changed file type or many changes are not).
    assert side.modes.count("narrowed") >= len(steps) // 2, side.modes


def test_every_kind_of_change_narrowed_in_one_chain(
    windmill: WindmillEmulator,
    pristine: tuple[str, Path, narrowed.NarrowState],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every change, each alone, then all at once: each pull is narrowed (or says why not).

    Each narrowed CLI is given only the changed items' wmill-lock.yaml entries.
    """
    caplog.set_level(logging.INFO, logger="gitsync.backup.narrowed")
    side, full = start(windmill, pristine, tmp_path / "run")
    model = Model(windmill.workspace(side.workspace_id))
    for i, name in enumerate(sorted(CHANGES)):
        CHANGES[name](model, 3 * i + 1)
        mode = side.pull()
        reference_pull(windmill, side.workspace_id, full)
        assert_same_tree(side.export, full, f"{name} ({mode})")
        # A file type's new extension changes the layout of resources that did
        # not change: that one is pulled in full (the file-extension map changed).
        assert mode in ("narrowed", FILE_TYPE_CHANGED), (name, mode)
    assert side.modes.count("narrowed") >= len(CHANGES) - 1, side.modes
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("narrowed pull:")]
    assert len(done) == side.modes.count("narrowed")
    assert all("lock entries given" in message for message in done), done


def test_a_missing_rule_is_caught(
    windmill: WindmillEmulator,
    pristine: tuple[str, Path, narrowed.NarrowState],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Negative control: without serving same-path items (rule 3) the exports differ."""
    monkeypatch.setattr(narrow, "_SAME_PATH", ())
    side, full = start(windmill, pristine, tmp_path / "run")
    model = Model(windmill.workspace(side.workspace_id))
    model.ws.update("script", "f/team/hello_py", summary="without rule 3")
    assert side.pull() == "narrowed"
    reference_pull(windmill, side.workspace_id, full)
    with pytest.raises(AssertionError, match="only in the full one"):
        assert_same_tree(side.export, full, "without rule 3")
