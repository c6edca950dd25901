"""Telling someone when backups stop: failure and staleness alerts.

Any endpoint that takes a JSON POST will do: a Windmill webhook, Slack, a
chat bridge. The URL may itself be a secret (Slack's are), so it is never
logged. A watchdog thread checks the job history on its own, so a target
that used to sync and has gone quiet raises an alert even if nothing calls
the service at all.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


class AlertSender:
    def __init__(self, url: str, timeout: float = 10) -> None:
        self._url = url
        self.timeout = timeout

    def send(self, payload: dict[str, Any]) -> bool:
        # Slack shows "text"; anything else can read the structured fields.
        body = json.dumps({"text": payload["message"], **payload}).encode()
        request = urllib.request.Request(  # noqa: S310 - http(s), checked in config
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "windmill-git-sync"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                ok = bool(200 <= response.status < 300)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("could not deliver an alert (%s)", type(exc).__name__)
            return False
        if not ok:
            log.warning("the alert endpoint refused an alert")
        return ok


class StaleTarget(Protocol):
    @property
    def target(self) -> str: ...
    @property
    def workspace(self) -> str: ...
    @property
    def remote(self) -> str: ...
    @property
    def branch(self) -> str: ...
    @property
    def last_success_at(self) -> float | None: ...
    @property
    def stale_alert_for(self) -> float | None: ...


class TargetHistory(Protocol):
    """The job store (jobs/store.py) as the watchdog uses it."""

    def summaries(self) -> Sequence[StaleTarget]: ...
    def note_stale_alert(self, target: str, last_success_at: float) -> None: ...


class Watchdog:
    """Alerts once per silence: when a target's last success is older than ``stale_after``.

    Which silence was reported lives in the job store, not in memory, so a
    restart neither forgets a silence (it still alerts, even if the jobs that
    succeeded were pruned) nor reports it again.
    """

    def __init__(
        self, store: TargetHistory, sender: AlertSender, *, stale_after: float, interval: float
    ) -> None:
        self.store = store
        self.sender = sender
        self.stale_after = stale_after
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watchdog must outlive any one bad check
                log.exception("the staleness check failed")

    def check(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        alerted = []
        for target in self.store.summaries():
            last = target.last_success_at
            if last is None or now - last < self.stale_after:
                continue
            if target.stale_alert_for == last:
                continue  # already told about this silence
            hours = (now - last) / 3600
            sent = self.sender.send(
                {
                    "event": "backup_stale",
                    "workspace": target.workspace,
                    "remote": target.remote,
                    "branch": target.branch,
                    "last_success": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
                    "age_seconds": int(now - last),
                    "message": f"No successful backup of workspace '{target.workspace}' to "
                    f"{target.remote} ({target.branch}) for {hours:.1f} h",
                }
            )
            if sent:
                self.store.note_stale_alert(target.target, last)
                alerted.append(target.target)
        return alerted
