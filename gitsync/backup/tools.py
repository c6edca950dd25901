"""What one run borrows from the long-lived service: settings, the CLI, the secret scanner.

``SyncService`` makes them once; each run's steps use them, and retry their
network calls through them so that the metrics count every retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.retry import with_retries
from gitsync.secretscan.scan import SecretScanner
from gitsync.windmill.wmill import WmillCli

T = TypeVar("T")

# Records the running wmill child's process group, for ending it after a crash
# (Git runs in-process: there is no other child).
PID_FILE = "child.pid"
# The CLI's export, in the target's directory: what is staged, and the files
# the secret screen remembers by their path (service.after_answer).
EXPORT_DIR = "export"


@dataclass(frozen=True)
class Tools:
    settings: Settings
    wmill: WmillCli
    scanner: SecretScanner
    on_retry: Callable[[str], None] | None = None

    def retrying(self, attempt: Callable[[], T], what: str, deadline: Deadline) -> T:
        return with_retries(
            attempt,
            policy=self.settings.retry_policy,
            deadline=deadline,
            what=what,
            on_retry=self.on_retry,
        )
