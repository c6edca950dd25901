"""What a failed ``wmill`` run means: its output read into the service's typed errors.

The CLI reports failures as text meant for a terminal. ``RULES`` says what its
words mean, read top to bottom: the first pattern found in the output decides
the error (so a specific pattern comes before a general one that would also
match). One case needs more than the output: with WM_TOKEN the CLI says "Could
not authenticate" for a bad token, a Windmill answering 500 and a dead server
alike. For that one the caller asks Windmill's login check itself
(``needs_login_check``) and passes the answer in, so ``classify`` is a function
of what it is given and makes no request.
"""

from __future__ import annotations

import re
import signal
from typing import Literal, NamedTuple

from gitsync.errors import CommandError, WindmillAuthError, WindmillError

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Outcome(NamedTuple):
    """The error a failure becomes. ``message`` may name {workspace}, {base_url},
    {action} ("pull", "push"), {code} (the HTTP status the output or the login
    check gave) and {returncode}."""

    error: type[WindmillError]
    message: str
    # "5xx": transient when {code} is a server error (a 4xx will not heal by itself).
    transient: bool | Literal["5xx"] = False


TOKEN_REJECTED = Outcome(
    WindmillAuthError, "Windmill rejected the token for workspace '{workspace}'"
)
NO_PERMISSION = Outcome(
    WindmillAuthError, "The Windmill token lacks permission to export workspace '{workspace}'"
)
NO_WORKSPACE = Outcome(
    WindmillError, "Windmill workspace '{workspace}' was not found at {base_url}"
)
UNREACHABLE = Outcome(WindmillError, "Could not connect to Windmill at {base_url}", transient=True)
EXPORT_FAILED = Outcome(
    WindmillError, "Windmill failed to export workspace '{workspace}' (HTTP {code})", "5xx"
)
LOGIN_CHECK_FAILED = Outcome(
    WindmillError, "Windmill answered HTTP {code} to the login check", "5xx"
)
BAD_ARCHIVE = Outcome(WindmillError, "Windmill returned an invalid workspace archive")
NO_SPACE = Outcome(
    WindmillError,
    "The Windmill {action} failed: no space left on the service's disk "
    "(or a file above MAX_FILE_BYTES)",
)
ANYTHING_ELSE = Outcome(
    WindmillError, "The Windmill {action} failed (wmill exit code {returncode})"
)
# Not an error yet: what the login check answered decides (see _after_login_check).
ASK_LOGIN_CHECK = Outcome(WindmillError, "")


class Rule(NamedTuple):
    pattern: re.Pattern[str]  # a named group "code" is the HTTP status for the message
    outcome: Outcome
    # Also when the CLI was killed by this signal (whatever it printed before).
    killed_by: signal.Signals | None = None


def _rule(pattern: str, outcome: Outcome, killed_by: signal.Signals | None = None) -> Rule:
    return Rule(re.compile(pattern), outcome, killed_by)


RULES: tuple[Rule, ...] = (
    _rule(r"Could not authenticate", ASK_LOGIN_CHECK),
    _rule(r"Failed to request tarball from API: 401", TOKEN_REJECTED),
    _rule(r"Permission denied|Failed to request tarball from API: 403", NO_PERMISSION),
    _rule(r"Workspace id '[^']*' not found", NO_WORKSPACE),
    _rule(r"Network error|fetch failed|ECONNREFUSED", UNREACHABLE),
    _rule(r"Failed to request tarball from API: (?P<code>\d{3})", EXPORT_FAILED),
    _rule(r"Request failed \((?P<code>\d{3})\)", LOGIN_CHECK_FAILED),
    _rule(r"central directory|is this a zip", BAD_ARCHIVE),
    # EFBIG (or SIGXFSZ, when not caught) is a file above MAX_FILE_BYTES: RLIMIT_FSIZE.
    _rule(r"EFBIG|ENOSPC|(?i:no space left)", NO_SPACE, killed_by=signal.SIGXFSZ),
)


def _first_match(exc: CommandError) -> tuple[Outcome, re.Match[str] | None]:
    output = _ANSI.sub("", f"{exc.stdout}\n{exc.stderr}")
    for rule in RULES:
        match = rule.pattern.search(output)
        if match or (rule.killed_by is not None and exc.returncode == -rule.killed_by):
            return rule.outcome, match
    return ANYTHING_ELSE, None


def needs_login_check(exc: CommandError) -> bool:
    """Whether ``classify`` needs to know what Windmill's login check answers the token."""
    return _first_match(exc)[0] is ASK_LOGIN_CHECK


def _after_login_check(status: int | None) -> Outcome:
    if status is None:
        return UNREACHABLE
    if status >= 500:
        return LOGIN_CHECK_FAILED
    return TOKEN_REJECTED


def classify(
    exc: CommandError, *, workspace: str, base_url: str, action: str, login_status: int | None
) -> WindmillError:
    """The failed run of ``wmill sync <action>`` as an error a user can act on.

    ``login_status`` is the HTTP status of Windmill's login check (``GET
    users/whoami``) with the run's token, None if Windmill did not answer; it is
    read only when ``needs_login_check(exc)``.
    """
    outcome, match = _first_match(exc)
    code = int(match["code"]) if match and "code" in match.re.groupindex else None
    if outcome is ASK_LOGIN_CHECK:
        outcome, code = _after_login_check(login_status), login_status
    message = outcome.message.format(
        workspace=workspace, base_url=base_url, action=action, code=code, returncode=exc.returncode
    )
    transient = outcome.transient
    if transient == "5xx":
        transient = code is not None and code >= 500
    return outcome.error(message, detail=exc.detail, transient=transient)
