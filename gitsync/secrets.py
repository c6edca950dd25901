"""Secrets as a type, and the redactor that keeps them out of every output.

Modelled on pip's ``HiddenText``: a :class:`Secret` prints as ``<SECRET>`` and
is unwrapped with :meth:`Secret.reveal` only at the moment a child process or
an HTTP call needs it.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable

REDACTED = "<REDACTED>"

# Usernames git may pair with a token in Basic auth (see credentials.py); the
# base64 of "user:token" is only recognisable if we know the user.
_KNOWN_USERNAMES = ("git", "x-access-token", "oauth2", "x-token-auth", "pat", "token")


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<SECRET>')"

    def __str__(self) -> str:
        return "<SECRET>"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("secrets are not picklable")


class Redactor:
    """Replaces every known form of the given secrets in text."""

    def __init__(self, secrets: Iterable[Secret], usernames: Iterable[str] = ()) -> None:
        forms: set[str] = set()
        users = set(_KNOWN_USERNAMES) | {u for u in usernames if u}
        for secret in secrets:
            value = secret.reveal()
            if len(value) < 4:  # too short to redact without mangling ordinary text
                continue
            forms.add(value)
            forms.add(urllib.parse.quote(value, safe=""))
            forms.add(urllib.parse.quote_plus(value))
            for user in users:
                forms.add(base64.b64encode(f"{user}:{value}".encode()).decode())
        # Longest first so a form containing another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None

    def scrub(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def scrub_bytes(self, data: bytes) -> str:
        return self.scrub(data.decode("utf-8", errors="replace"))


NO_SECRETS = Redactor(())
