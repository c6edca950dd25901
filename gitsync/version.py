"""Which service and which ``wmill`` CLI this is: one place for both versions.

The service's version is setup.cfg's, read from the installed distribution's
metadata (the image installs the wheel, ``make`` an editable install), so
``--version``, ``/metrics`` and the image labels cannot drift apart. The CLI's
is the one ``package.json`` pins; a test holds the two equal. It is a
constant, not ``wmill --version``, so a scrape never starts a child process.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "windmill-git-sync"
CLI_VERSION = "1.819.0"


@cache
def service_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # imported from a source tree nobody installed
        return "unknown"
