"""Step 1 of a sync: the workspace into the export directory, with the request's own token.

Skipped when nothing the pull reads has changed (``skip.py``); narrowed to
the items that changed when it can be (``narrowed.py``); otherwise the CLI
pulls the whole workspace through the recording pass-through
(``windmill/recorder.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from gitsync.backup import narrowed
from gitsync.backup.job import SyncJob
from gitsync.backup.skip import Decision, PullGate
from gitsync.backup.tools import PID_FILE, Tools
from gitsync.deadline import Deadline
from gitsync.errors import SyncTimeout, WindmillGitSyncError
from gitsync.secrets import Redactor
from gitsync.windmill.recorder import Exchange, PassThrough

log = logging.getLogger(__name__)


@dataclass
class Pull:
    tools: Tools
    job: SyncJob
    root: Path
    deadline: Deadline
    crashed: bool
    # When the last full pull of this target ran, once a narrowed pull is done.
    last_full_pull: float | None = None

    def run(
        self,
        gate: PullGate,
        remote_tip: Callable[[], str | None],
        early_tip: Callable[[], Future[str | None]],
    ) -> Decision:
        """The pull; ``remote_tip`` asks the remote for its tip, ``early_tip`` in the background.

        When the skip check finds Windmill's content changed, the request's
        token has just been answered by Windmill as before, and the remote's
        tip is asked while the CLI pulls: the commit needs it next.
        """
        decision = gate.check(
            self.job.windmill_token, self.deadline, crashed=self.crashed, remote_tip=remote_tip
        )
        if decision.skip:
            log.info("nothing the pull reads has changed; the CLI is not started")
            return decision
        if decision.replay and not decision.tip_known:
            decision.early_tip = early_tip()
        state = narrowed.NarrowState.load(self.root)
        gate.forget()
        narrowed.NarrowState.forget(self.root)
        exchanges = self._narrowed(gate, decision, state)
        if exchanges is not None:
            self.last_full_pull = state.last_full if state is not None else None
        else:
            exchanges = self._full(gate, decision)
        decision.exchanges = exchanges
        return decision

    def _full(self, gate: PullGate, decision: Decision) -> list[Exchange]:
        passthrough = PassThrough(
            gate.upstream,
            decision.replay,
            self.deadline.for_command(self.tools.settings.command_timeout),
        )
        attempts = 0

        def pull_once() -> None:
            nonlocal attempts
            attempts += 1
            passthrough.begin_attempt(first=attempts == 1)
            self._cli_pull(gate.export_dir, passthrough)

        with passthrough.running():
            self.tools.retrying(pull_once, "the Windmill pull", self.deadline)
        return passthrough.exchanges()

    def _narrowed(
        self, gate: PullGate, decision: Decision, state: narrowed.NarrowState | None
    ) -> list[Exchange] | None:
        """Only the items that changed; None: pull in full."""
        choice = narrowed.choose(self.tools.settings, state, decision.replay, self.job.scope)
        if isinstance(choice, str):
            log.info("full pull: %s", choice)
            return None
        try:
            return narrowed.run(
                choice,
                upstream=gate.upstream,
                replay=decision.replay,
                timeout=self.deadline.for_command(self.tools.settings.command_timeout),
                root=self.root,
                export_dir=gate.export_dir,
                pull=lambda directory, passthrough: self._cli_pull(
                    directory, passthrough, choice.plan.includes
                ),
            )
        except SyncTimeout:
            raise
        except (WindmillGitSyncError, OSError) as exc:
            # The full pull that follows meets (and reports) a lasting failure.
            log.warning("the narrowed pull failed (%s); pulling in full", type(exc).__name__)
            return None

    def _cli_pull(
        self, directory: Path, passthrough: PassThrough, includes: Sequence[str] = ()
    ) -> None:
        job = self.job
        self.tools.wmill.pull(
            workspace=job.workspace,
            token=job.windmill_token,
            export_dir=directory,
            scope=job.scope,
            deadline=self.deadline,
            # The CLI's errors quote its base URL: the run's secret path must not reach an answer.
            redactor=Redactor(
                [job.windmill_token, job.git_token, passthrough.secret], [job.username]
            ),
            pid_file=self.root / PID_FILE,
            windmill_url=passthrough.url,
            includes=includes,
        )
