"""Matches that are not secrets: code that handles keys, placeholders, documentation examples.

detect-secrets' keyed detectors are line regexes. On real Windmill
workspaces most of what they match is not a secret: a regular expression
or a ``.replace()`` argument holding a private-key header, a resource whose
key is ``-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----``,
``postgres://postgres:changeme@localhost``, AWS's documented
``AKIAIOSFODNN7EXAMPLE``. Each function here is a detect-secrets filter (its
documented hook: the scanner calls it with the arguments it names and drops
the match when it returns True), so detect-secrets stays the engine and
this module only says why a match is not a secret.

A private key counts only as a whole block whose body decodes to key
material of a plausible size and structure; anything that cannot be read
as such a block is not a key, and anything that can, is.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from detect_secrets.transformers import get_transformed_file

# Filter paths, as detect-secrets' settings name them.
FILTERS = (
    f"{__name__}.is_documentation_example",
    f"{__name__}.is_placeholder_token",
    f"{__name__}.is_loopback_placeholder_password",
    f"{__name__}.is_not_a_private_key",
)

# AWS's documentation keys end so (AKIAIOSFODNN7EXAMPLE, wJalrXUtnFEMI/…EXAMPLEKEY);
# other providers' documentation follows the same habit.
_EXAMPLE_MARK = "EXAMPLE"
# jwt.io's sample token, copied into countless READMEs and tests.
_SAMPLE_JWT_CLAIMS = ({"sub": "1234567890", "name": "John Doe"},)

# Passwords written for a local development database, not for a real one.
_PLACEHOLDER_PASSWORDS = frozenset(
    {
        "admin",
        "changeit",
        "changeme",
        "example",
        "mysecretpassword",
        "pass",
        "passw0rd",
        "password",
        "postgres",
        "root",
        "secret",
        "test",
        "user",
        "yourpassword",
    }
)
_LOOPBACK_NAMES = frozenset({"localhost", "host.docker.internal", "0.0.0.0"})  # noqa: S104

# PEM and OpenSSH armour: the header names the kind, the footer must match it.
_BLOCK = re.compile(
    r"-----BEGIN (?P<kind>(?:RSA |DSA |EC |OPENSSH |ENCRYPTED )?PRIVATE KEY"
    r"|PGP PRIVATE KEY BLOCK)-----"
    r"(?P<body>.{0,65536}?)"
    r"-----END (?P=kind)-----",
    re.DOTALL,
)
# Inside a string literal a block's newlines are escapes, and its lines may
# be glued together with quotes and + (Python, JavaScript, YAML, JSON).
_ESCAPED_NEWLINE = re.compile(r"\\[rn]")
_ARMOUR_HEADER = re.compile(r"^[\"'`\s+,]*[A-Za-z][A-Za-z-]*: [^\n]*$", re.MULTILINE)
_PGP_CHECKSUM = re.compile(r"^[\"'`\s+,]*=[A-Za-z0-9+/]{4}[\"'`\s+,]*$", re.MULTILINE)
# "…" + "…" between lines of a literal; then the quotes, commas and spaces left.
_CONCATENATION = re.compile(r"[\"'`]\s*\+?\s*[\"'`]")
_LITERAL_GLUE = re.compile(r"[\"'`\s,]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# The smallest real private key: Ed25519 in PKCS#8 is 48 bytes.
MIN_KEY_BYTES = 48
_OPENSSH_MAGIC = b"openssh-key-v1\0"
# Formats detect-secrets also flags, not parsed here: a body of this much base64 follows.
_OTHER_FORMAT_BODY = re.compile(r"[A-Za-z0-9+/]{64,}")
_LINES_AFTER_HEADER = 200


def is_documentation_example(secret: str) -> bool:
    if _EXAMPLE_MARK in secret:
        return True
    if secret.startswith("eyJ"):
        claims = _jwt_claims(secret)
        return claims is not None and any(
            sample.items() <= claims.items() for sample in _SAMPLE_JWT_CLAIMS
        )
    return False


def is_placeholder_token(secret: str, plugin: Any, line: str) -> bool:
    """``ghp_xxxx…``, ``sk_live_000…``: the provider's prefix, then filler.

    Read from the line: a detector whose regex has a group (GitHub's) hands
    filters the group as ``secret``, the prefix alone. (detect-secrets runs
    a filter on each match only if it takes ``secret``.)
    """
    if type(plugin).__name__ in ("PrivateKeyDetector", "BasicAuthDetector"):
        return False
    tokens = [m.group(0) for regex in plugin.denylist for m in regex.finditer(line)]
    return bool(tokens) and all(_is_filler(token) for token in tokens)


def _is_filler(token: str) -> bool:
    tail = re.sub(r"^(?:[a-z]+[_-])+", "", token)
    tail = re.sub(r"[_-]", "", tail)
    return len(tail) >= 8 and len(set(tail.lower())) <= 2


def is_loopback_placeholder_password(secret: str, plugin: Any, line: str) -> bool:
    """A placeholder password for a database on this machine: local development."""
    if type(plugin).__name__ != "BasicAuthDetector" or not _is_placeholder_password(secret):
        return False
    for match in re.finditer(r"[a-z][a-z0-9+.-]*://[^\s\"'`]+", line, re.IGNORECASE):
        try:
            parts = urlsplit(match.group(0))
            host, password = parts.hostname, parts.password
        except ValueError:
            continue
        if password == secret and host is not None and _is_loopback(host):
            return True
    return False


def is_not_a_private_key(filename: str, plugin: Any, line: str, context: Any) -> bool:
    """A private-key header with no key behind it: a regex, an argument, a placeholder."""
    if type(plugin).__name__ != "PrivateKeyDetector":
        return False
    after = _lines_after(filename, line, context)
    if after is None:
        # Not where the scanner saw it (its second, eager pass): a key
        # anywhere in the file keeps the finding.
        whole = _unescaped("\n".join(_lines_as_scanned(filename)))
        return not any(_holds_key(m) for m in _BLOCK.finditer(whole))
    if "BEGIN SSH2 ENCRYPTED PRIVATE KEY" in line or "PuTTY-User-Key-File" in line:
        return _OTHER_FORMAT_BODY.search("\n".join([line, after])) is None
    # Each header on the line, read with what follows it: a key only if a
    # whole block starts right there.
    return not any(
        (block := _BLOCK.match(_unescaped(line[m.start() :] + "\n" + after))) is not None
        and _holds_key(block)
        for m in re.finditer("-----BEGIN ", line)
    )


def _lines_after(filename: str, line: str, context: Any) -> str | None:
    """The lines after the matched one, as detect-secrets read the file.

    YAML values arrive whole on one line (detect-secrets decodes them);
    elsewhere a key block spans the lines after its header.
    """
    lines = _lines_as_scanned(filename)
    index = context.start_line + context.target_index
    if index >= len(lines) or lines[index].rstrip() != line:
        return None
    return "\n".join(lines[index + 1 : index + _LINES_AFTER_HEADER])


def _lines_as_scanned(filename: str) -> list[str]:
    try:
        st = os.stat(filename)
    except OSError:
        return []
    # An export file is rewritten in place from one sync to the next.
    return _read_lines(filename, st.st_mtime_ns, st.st_size, st.st_ino)


@lru_cache(maxsize=16)
def _read_lines(filename: str, *identity: int) -> list[str]:
    # Called per finding: a file's findings come one after another.
    try:
        with open(filename) as handle:
            lines = get_transformed_file(handle)  # type: ignore[arg-type]
            if not lines:
                handle.seek(0)
                lines = handle.readlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [str(x).rstrip("\r\n") for x in lines]


def _unescaped(text: str) -> str:
    return _ESCAPED_NEWLINE.sub("\n", text)


def _holds_key(block: re.Match[str]) -> bool:
    kind, body = block.group("kind"), block.group("body")
    encrypted_pem = "Proc-Type:" in body
    body = _ARMOUR_HEADER.sub("", body)
    if kind.startswith("PGP"):
        body = _PGP_CHECKSUM.sub("", body)
    body = _LITERAL_GLUE.sub("", _CONCATENATION.sub("", body))
    if not _BASE64.fullmatch(body):
        return False
    try:
        material = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(material) < MIN_KEY_BYTES:
        return False
    if kind.startswith("OPENSSH"):
        return material.startswith(_OPENSSH_MAGIC)
    if kind.startswith("PGP"):
        return bool(material[0] & 0x80)  # an OpenPGP packet tag
    if encrypted_pem:
        return True  # the body is ciphertext: no structure to check
    return _is_whole_der_sequence(material)


def _is_whole_der_sequence(material: bytes) -> bool:
    """PKCS#1, PKCS#8 and SEC1 keys are one DER SEQUENCE spanning all the bytes."""
    if material[0] != 0x30:
        return False
    first = material[1]
    if first < 0x80:
        return 2 + first == len(material)
    width = first & 0x7F
    if not 1 <= width <= 4 or len(material) < 2 + width:
        return False
    return 2 + width + int.from_bytes(material[2 : 2 + width], "big") == len(material)


def _is_placeholder_password(password: str) -> bool:
    if password.lower() in _PLACEHOLDER_PASSWORDS:
        return True
    # SECRET_PASSWORD, DB_PASS: a name to substitute, not a value.
    if re.fullmatch(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+", password):
        return True
    return len(password) >= 3 and len(set(password.lower())) == 1  # xxx, ****


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jwt_claims(token: str) -> dict[str, Any] | None:
    parts = token.split(".")
    if len(parts) < 2:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None
