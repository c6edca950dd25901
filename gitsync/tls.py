"""Verified TLS contexts, built once per CA file and shared.

Loading a CA bundle costs 20-30 ms (the system's holds about 140
certificates), and a sync used to pay it four or five times: once for each
client of Windmill and once for each new connection to the Git host. A
context is safe to share between threads. It is keyed by its CA file's
size and modification time, so a rotated CA file is read again without a
restart.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

from urllib3.util.ssl_ import create_urllib3_context


def windmill_context(extra_ca: Path | None) -> ssl.SSLContext:
    """The system's CAs, and ``extra_ca`` beside them (NODE_EXTRA_CA_CERTS' meaning)."""
    return _windmill(*_stamp(extra_ca))


def git_context(ca_file: Path | None) -> ssl.SSLContext:
    """``ca_file`` alone if given (GIT_SSL_CAINFO's meaning), else OpenSSL's default bundle."""
    if ca_file is None:
        default = system_ca_file()
        ca_file = Path(default) if default else None
    return _git(*_stamp(ca_file))


def system_ca_file() -> str | None:
    # OpenSSL's default bundle, named explicitly: loading the defaults
    # instead would let SSL_CERT_FILE from the environment win.
    cafile = ssl.get_default_verify_paths().openssl_cafile
    return cafile if Path(cafile).is_file() else None


def _stamp(path: Path | None) -> tuple[str | None, int, int]:
    if path is None:
        return None, 0, 0
    try:
        stat = path.stat()
    except OSError:
        return str(path), -1, -1  # not cached apart: loading it raises
    return str(path), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _windmill(cafile: str | None, _size: int, _mtime: int) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if cafile is not None:
        context.load_verify_locations(cafile=cafile)
    return context


@functools.lru_cache(maxsize=8)
def _git(cafile: str | None, _size: int, _mtime: int) -> ssl.SSLContext:
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    if cafile is not None:
        context.load_verify_locations(cafile=cafile)
    else:
        context.load_default_certs()
    return context
