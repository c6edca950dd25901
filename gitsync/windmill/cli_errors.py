"""What a failed ``wmill`` run means: its output read into the service's typed errors.

The CLI reports failures as text meant for a terminal; the same words are
matched here, once, so a user gets a message (and the runner a transient
or permanent error) that says what to fix.
"""

from __future__ import annotations

import re

from gitsync.config import Settings
from gitsync.errors import CommandError, WindmillAuthError, WindmillError
from gitsync.secrets import Secret
from gitsync.windmill.api import WindmillApi

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def classify(
    exc: CommandError, settings: Settings, workspace: str, token: Secret, action: str
) -> WindmillError:
    """The failed run of ``wmill sync <action>`` as a message a user can act on."""
    text = _ANSI.sub("", f"{exc.stdout}\n{exc.stderr}")
    base = settings.windmill_base_url
    detail = exc.detail
    if "Could not authenticate" in text:
        # With WM_TOKEN the CLI says this for a 500 or a dead server too.
        probe = WindmillApi(
            base, token, extra_ca=settings.node_extra_ca_certs, timeout=10
        ).status_of("users/whoami")
        if probe is None:
            return WindmillError(
                f"Could not connect to Windmill at {base}", detail=detail, transient=True
            )
        if probe >= 500:
            return WindmillError(
                f"Windmill answered HTTP {probe} to the login check",
                detail=detail,
                transient=True,
            )
        return WindmillAuthError(
            f"Windmill rejected the token for workspace '{workspace}'", detail=detail
        )
    if "Failed to request tarball from API: 401" in text:
        return WindmillAuthError(
            f"Windmill rejected the token for workspace '{workspace}'", detail=detail
        )
    if "Permission denied" in text or "Failed to request tarball from API: 403" in text:
        return WindmillAuthError(
            f"The Windmill token lacks permission to export workspace '{workspace}'",
            detail=detail,
        )
    if re.search(r"Workspace id '[^']*' not found", text):
        return WindmillError(
            f"Windmill workspace '{workspace}' was not found at {base}", detail=detail
        )
    if "Network error" in text or "fetch failed" in text or "ECONNREFUSED" in text:
        return WindmillError(
            f"Could not connect to Windmill at {base}", detail=detail, transient=True
        )
    status = re.search(r"Failed to request tarball from API: (\d{3})", text)
    if status:
        code = int(status.group(1))
        return WindmillError(
            f"Windmill failed to export workspace '{workspace}' (HTTP {code})",
            detail=detail,
            transient=code >= 500,
        )
    request_failed = re.search(r"Request failed \((\d{3})\)", text)
    if request_failed:
        code = int(request_failed.group(1))
        return WindmillError(
            f"Windmill answered HTTP {code} to the login check",
            detail=detail,
            transient=code >= 500,
        )
    if "central directory" in text or "is this a zip" in text:
        return WindmillError("Windmill returned an invalid workspace archive", detail=detail)
    if (
        exc.returncode == -25
        or "EFBIG" in text
        or "ENOSPC" in text
        or ("no space left" in text.lower())
    ):
        return WindmillError(
            f"The Windmill {action} failed: no space left on the service's disk "
            "(or a file above MAX_FILE_BYTES)",
            detail=detail,
        )
    return WindmillError(
        f"The Windmill {action} failed (wmill exit code {exc.returncode})", detail=detail
    )
