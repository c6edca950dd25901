"""``python -m gitsync``: the same as the ``windmill-git-sync`` command."""

import sys

from gitsync.cli import main

sys.exit(main())
