"""The few direct calls the service makes to Windmill's HTTP API.

Only used to tell failures apart: when the CLI reads its token from the
environment, a 500 or an unreachable server on the login check prints the
same "Could not authenticate" text as a bad token does. One GET settles it.
"""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

from .secrets import Secret


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The token must not follow a redirect to another host.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def whoami_status(
    base_url: str, token: Secret, *, extra_ca: Path | None, timeout: float = 10
) -> int | None:
    """HTTP status of ``GET /api/users/whoami``, or None if Windmill could not be reached."""
    context = ssl.create_default_context()
    if extra_ca:
        context.load_verify_locations(cafile=str(extra_ca))
    opener = urllib.request.build_opener(
        _NoRedirect(), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(  # noqa: S310 - base URL is http(s), checked in config
        base_url.rstrip("/") + "/api/users/whoami",
        headers={"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"},
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None
