"""One ``SKIPPED container test: <reason>`` line when no Docker engine can run here.

A pytest plugin, loaded by ``tests/test_container.py`` (``pytest_plugins``).
Before each of that module's tests it asks ``engine.preflight()`` (once per
session) whether an engine can run at all; if not, the test is skipped from
here, so pytest's ``-ra`` summary folds them into one entry, and the reason is
printed once more, plainly, at the end. Under CI (``CI`` set) a test that
cannot run fails instead: there it must run.
"""

from __future__ import annotations

import pytest

from tests.container.engine import REASON, cannot_run, preflight

_MODULE = "test_container.py"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.path.name != _MODULE:
        return
    if REASON not in item.config.stash:
        item.config.stash[REASON] = preflight()
    reason = item.config.stash[REASON]
    if reason is not None:
        cannot_run(item.config, reason)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    reason = config.stash.get(REASON, None)
    if reason is not None:
        terminalreporter.write_line(f"SKIPPED container test: {reason}")
