"""Handing the Git token to git without it touching argv, env, URLs or disk.

The token goes into an anonymous in-memory file (memfd) that only the git
children inherit; a credential helper scoped to the remote's exact origin
reads it from ``/proc/self/fd/N``. The helper itself is configured through
``GIT_CONFIG_COUNT`` variables, so neither the helper string nor the token
shows in any command line (shared security notes, rules 1-4).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from gitsync.secrets import Secret

# Basic-auth usernames providers expect beside a token (security notes c.5).
_PROVIDER_USERNAMES = {
    "github.com": "x-access-token",
    "bitbucket.org": "x-token-auth",
    "dev.azure.com": "pat",
}


def default_username(remote_url: str) -> str:
    host = (urllib.parse.urlsplit(remote_url).hostname or "").lower()
    if host in _PROVIDER_USERNAMES:
        return _PROVIDER_USERNAMES[host]
    if host == "gitlab.com" or host.startswith("gitlab."):
        return "oauth2"
    return "git"


def origin_of(remote_url: str) -> str:
    """``https://host[:port]``: the credential context the helper is scoped to."""
    parts = urllib.parse.urlsplit(remote_url)
    return f"{parts.scheme}://{parts.netloc}"


@contextmanager
def credential_fd(username: str, token: Secret) -> Iterator[int]:
    """An inheritable memfd holding the credential in git's helper format."""
    fd = os.memfd_create("wgs-credential", 0)  # no MFD_CLOEXEC: git's children need it
    try:
        os.write(fd, f"username={username}\npassword={token.reveal()}\n".encode())
        yield fd
    finally:
        os.close(fd)


def helper_config(remote_url: str, fd: int) -> list[tuple[str, str]]:
    """Config entries that make git ask our helper, and only it, for this origin."""
    # Reopening /proc/self/fd/N starts at offset 0, so every "get" reads it whole.
    helper = f'!f() {{ test "$1" = get && cat /proc/self/fd/{fd}; }}; f'
    return [
        # An empty value resets any helper configured elsewhere (e.g. "store").
        ("credential.helper", ""),
        (f"credential.{origin_of(remote_url)}.helper", helper),
        ("credential.useHttpPath", "false"),
    ]
