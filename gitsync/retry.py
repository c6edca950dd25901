"""Retrying transient failures: exponential backoff with jitter, bounded twice.

A dropped connection or a 5xx from Windmill or the Git host is worth another
try; an authentication error, a 4xx, a refusal or a timeout is not (it would
fail the same way, or has already used the time). Attempts and total time are
both bounded, and the total never outlives the sync's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import stamina

from gitsync.deadline import Deadline
from gitsync.errors import SyncError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    max_seconds: float = 120.0
    wait_initial: float = 1.0
    wait_max: float = 30.0


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, SyncError) and exc.transient


def with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    what: str,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Call ``fn``, retrying transient :class:`SyncError` s; the last error says how many tries."""
    attempt_number = 0
    try:
        for attempt in stamina.retry_context(
            on=_is_transient,
            attempts=policy.attempts,
            timeout=max(0.001, min(policy.max_seconds, deadline.remaining())),
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_initial,
        ):
            with attempt:
                attempt_number = attempt.num
                if attempt_number > 1:
                    if on_retry is not None:
                        on_retry(what)
                    log.info(
                        "retrying %s (attempt %d of %d)", what, attempt_number, policy.attempts
                    )
                return fn()
    except SyncError as exc:
        exc.attempts = attempt_number
        if exc.transient and attempt_number > 1:
            exc.message = f"{exc.message} (gave up after {attempt_number} attempts)"
        raise
    raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover
