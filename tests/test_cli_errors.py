"""What each failure of the real `wmill` CLI becomes, from its output alone.

The samples are the pinned CLI's own output (colours included), captured from
`wmill sync pull` against the Windmill emulator with each fault (see
tests/servers/test_windmill_emulator.py) or, where marked, quoted from the
error table of /work/shared/docs/windmill-protocol.md (§6, the `--token` mode
the service does not use, and push). `classify` is a pure function: the login
check's answer is given to it, as the caller (WmillCli) gets it from Windmill.
"""

from __future__ import annotations

import signal

import pytest

from gitsync.errors import CommandError, WindmillAuthError, WindmillError
from gitsync.windmill.cli_errors import classify, needs_login_check

BASE = "http://127.0.0.1:45013/"
WS = "ws1"

# The CLI in the service's WM_TOKEN mode: a bad token, a Windmill answering 500 to
# whoami and one that is down all end in these same three lines on stderr.
REAUTH = (
    "\x1b[34m! Could not reach API given existing credentials. Attempting to reauth...\x1b[39m\n"
    "\x1b[34mNot a TTY, can't login interactively.\x1b[39m\n"
    "\x1b[31mUnauthorized: Could not authenticate with the provided credentials\x1b[39m\n"
)
COMPUTING = (
    "\x1b[34m\x1b[90mComputing the files to update locally to match remote "
    "(taking wmill.yaml into account)\x1b[39m\x1b[39m\n"
)


def red(line: str) -> str:
    return f"\x1b[34m\x1b[31m{line}\x1b[39m\x1b[39m\n"


REJECTED = (WindmillAuthError, f"Windmill rejected the token for workspace '{WS}'", False)
UNREACHABLE = (WindmillError, f"Could not connect to Windmill at {BASE}", True)

# id, stdout, stderr, exit code, login check's answer -> error type, message, transient
SAMPLES = [
    ("bad-token", "", REAUTH, 1, 401, *REJECTED),
    (
        "whoami-500",
        "",
        REAUTH,
        1,
        500,
        WindmillError,
        "Windmill answered HTTP 500 to the login check",
        True,
    ),
    ("whoami-dead", "", REAUTH, 1, None, *UNREACHABLE),
    (
        "connection-refused",
        "",
        "\x1b[31mNetwork error: Could not connect to Windmill server at http://127.0.0.1:56677/\x1b[39m\n",
        1,
        None,
        *UNREACHABLE,
    ),
    (
        "token-not-allowed-on-workspace",
        "\x1b[33mCould not fetch ws_specific items from server (401): Unauthorized. Sync will "
        "proceed without server-side ws_specific items.\x1b[39m\n"
        + COMPUTING
        + red("Failed to request tarball from API: 401 Unauthorized")
        + red("Not authorized: Unauthorized"),
        "",
        1,
        None,
        *REJECTED,
    ),
    (
        "tarball-403",
        COMPUTING
        + red("Failed to request tarball from API: 403 Forbidden")
        + red("Permission denied: injected fault"),
        "",
        1,
        None,
        WindmillAuthError,
        f"The Windmill token lacks permission to export workspace '{WS}'",
        False,
    ),
    (
        "whoami-403 (--token mode, protocol §6)",
        "",
        "Permission denied: the token is valid but lacks the required scope.\n",
        1,
        None,
        WindmillAuthError,
        f"The Windmill token lacks permission to export workspace '{WS}'",
        False,
    ),
    (
        "unknown-workspace",
        COMPUTING
        + red(
            f"Workspace id 'no-such-ws' not found on {BASE}.\nNote this is the workspace *id* sent "
            "to the API, which is not necessarily what you passed to --workspace:\n"
            "  - check 'wmill workspace list' (the 'workspace id' column)\n"
            "  - check the 'workspaces' block of wmill.yaml ('workspaceId' overrides the "
            "workspace name)"
        ),
        "",
        1,
        None,
        WindmillError,
        f"Windmill workspace '{WS}' was not found at {BASE}",
        False,
    ),
    ("tarball-dropped", COMPUTING, "\x1b[31mfetch failed\x1b[39m\n", 1, None, *UNREACHABLE),
    (
        "tarball-500",
        COMPUTING
        + red("Failed to request tarball from API: 500 Internal Server Error")
        + red("Internal: injected fault"),
        "",
        1,
        None,
        WindmillError,
        f"Windmill failed to export workspace '{WS}' (HTTP 500)",
        True,
    ),
    (
        "whoami-500 (--token mode, protocol §6)",
        "",
        "Request failed (500): Internal: boom\n",
        1,
        None,
        WindmillError,
        "Windmill answered HTTP 500 to the login check",
        True,
    ),
    (
        "tarball-not-a-zip",
        COMPUTING,
        "\x1b[31mCan't find end of central directory : is this a zip file ? If it is, see "
        "https://stuk.github.io/jszip/documentation/howto/read_zip.html\x1b[39m\n",
        1,
        None,
        WindmillError,
        "Windmill returned an invalid workspace archive",
        False,
    ),
    (
        "file-above-MAX_FILE_BYTES",
        "\x1b[34mWriting script f/team/huge.script.yaml\x1b[39m\n",
        "\x1b[31mEFBIG: file too large, write\x1b[39m\n",
        1,
        None,
        WindmillError,
        "The Windmill pull failed: no space left on the service's disk "
        "(or a file above MAX_FILE_BYTES)",
        False,
    ),
    (
        "killed-by-SIGXFSZ",
        "\x1b[34mWriting script f/team/huge.script.yaml\x1b[39m\n",
        "",
        -signal.SIGXFSZ,
        None,
        WindmillError,
        "The Windmill pull failed: no space left on the service's disk "
        "(or a file above MAX_FILE_BYTES)",
        False,
    ),
    (
        "html-from-a-gateway",
        COMPUTING,
        f"\x1b[31mGot an HTML response from {BASE}api/w/ws1/workspaces/tarball?archive_type=zip "
        "(status 200). The request was intercepted by an upstream auth gateway (likely "
        'Cloudflare Access) before reaching Windmill. Body starts with: "<!doctype html>'
        '<html><body>Sign in</body></html>"\x1b[39m\n',
        1,
        None,
        WindmillError,
        "The Windmill pull failed (wmill exit code 1)",
        False,
    ),
]


@pytest.mark.parametrize(
    ("stdout", "stderr", "returncode", "login_status", "error", "message", "transient"),
    [row[1:] for row in SAMPLES],
    ids=[row[0] for row in SAMPLES],
)
def test_each_cli_failure_becomes_the_error_that_says_what_to_fix(
    stdout: str,
    stderr: str,
    returncode: int,
    login_status: int | None,
    error: type[WindmillError],
    message: str,
    transient: bool,
) -> None:
    failure = CommandError("wmill sync pull", returncode, stdout, stderr)
    got = classify(failure, workspace=WS, base_url=BASE, action="pull", login_status=login_status)
    assert (type(got), got.code, got.message, got.transient) == (
        error,
        error.code,
        message,
        transient,
    )
    assert got.detail == failure.detail  # the CLI's own words stay with the error


def test_only_the_ambiguous_login_failure_asks_windmill() -> None:
    asking = [
        name
        for name, stdout, stderr, returncode, *_ in SAMPLES
        if needs_login_check(CommandError("wmill sync pull", returncode, stdout, stderr))
    ]
    assert asking == ["bad-token", "whoami-500", "whoami-dead"]


def test_a_failed_push_names_the_push() -> None:
    # protocol §6: a write call failing in the middle of a push.
    output = (
        "Script creation for f/team/hello_py with parent None was not successful: "
        "500 - Internal Server Error - Internal: db down\n"
    )
    got = classify(
        CommandError("wmill sync push", 1, output, ""),
        workspace=WS,
        base_url=BASE,
        action="push",
        login_status=None,
    )
    assert (type(got), got.message) == (
        WindmillError,
        "The Windmill push failed (wmill exit code 1)",
    )
