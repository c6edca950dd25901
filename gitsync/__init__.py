"""windmill-git-sync: back up Windmill workspaces to any Git host over HTTPS.

Imports flow one way: ``web`` (HTTP) -> ``sync`` (the sync, restore, jobs)
-> ``git`` and ``windmill`` (the two sides a sync joins) -> the shared core
at this level (``config``, ``errors``, ``secrets``, ``deadline``, ``retry``,
``version``); ``ops`` (metrics, alerts, logs, readiness) is used by ``web``
and ``sync``.
"""
