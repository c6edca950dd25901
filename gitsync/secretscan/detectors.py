"""Detectors detect-secrets lacks, as detect-secrets plugins.

Its GitHub detector knows the classic tokens (``ghp_…``, ``gho_…``) but not
the fine-grained personal access tokens GitHub has issued since 2022
(``github_pat_`` then 22 and 59 characters), which are what a careful owner
now creates for a script. Loaded by detect-secrets from this file's path
(its documented way to add a plugin), so it runs with the same filters and
allowlist comment as the built-in ones.
"""

from __future__ import annotations

import re
from typing import ClassVar

from detect_secrets.plugins.base import RegexBasedDetector


class GitHubFineGrainedTokenDetector(RegexBasedDetector):
    """GitHub fine-grained personal access tokens."""

    secret_type = "GitHub Fine-Grained Token"  # noqa: S105 (a detector's name)
    denylist: ClassVar = [re.compile(r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}")]
