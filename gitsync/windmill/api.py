"""The few direct calls the service makes to Windmill's HTTP API.

The CLI does the backup; these calls only fill in what it cannot tell us:
who edited an item (attribution.py) and, because the CLI reports a 500 or an
unreachable server on its login check with the same words as a bad token,
whether Windmill really rejected the token.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gitsync.secrets import Secret
from gitsync.tls import windmill_context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # The token must not follow a redirect to another host; the caller gets the 3xx.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def windmill_opener(extra_ca: Path | None) -> urllib.request.OpenerDirector:
    """How the service reaches Windmill: verified TLS, no redirect, no ambient proxy."""
    # No proxy from the environment: ambient settings never reroute a token.
    return urllib.request.build_opener(
        _NoRedirect(),
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=windmill_context(extra_ca)),
    )


class WindmillApi:
    def __init__(
        self, base_url: str, token: Secret, *, extra_ca: Path | None, timeout: float = 20
    ) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._opener = windmill_opener(extra_ca)

    def _request(self, path: str, params: dict[str, str | int]) -> urllib.request.Request:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return urllib.request.Request(  # noqa: S310 - http(s) base URL, checked in config
            f"{self.base}/api/{urllib.parse.quote(path, safe='/')}{query}",
            headers={
                "Authorization": f"Bearer {self.token.reveal()}",
                "Accept": "application/json",
            },
        )

    def get_json(self, path: str, **params: str | int) -> Any:
        """GET ``/api/<path>``; raises urllib's errors on failure."""
        with self._opener.open(self._request(path, params), timeout=self.timeout) as response:
            return json.loads(response.read())

    def status_of(self, path: str) -> int | None:
        """HTTP status of a GET, or None if Windmill could not be reached."""
        try:
            with self._opener.open(self._request(path, {}), timeout=self.timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError, ValueError):
            return None
