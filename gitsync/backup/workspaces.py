"""Workspace "*": every workspace the token can see, each under its own sub-directory."""

from __future__ import annotations

import dataclasses
import re
import time
import urllib.error
from collections.abc import Callable

from gitsync.backup.job import Progress, SyncJob, SyncResult, join_prefix
from gitsync.config import Settings
from gitsync.errors import SyncError, WindmillAuthError, WindmillError, WindmillGitSyncError
from gitsync.windmill.api import WindmillApi

_WORKSPACE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,49}")


def sync_every_workspace(
    settings: Settings,
    job: SyncJob,
    progress: Progress | None,
    sync_one: Callable[[SyncJob, Progress | None], SyncResult],
) -> SyncResult:
    """Each workspace the token can see, under its own sub-directory, one after another."""
    started = time.monotonic()
    api = WindmillApi(
        settings.windmill_base_url,
        job.windmill_token,
        extra_ca=settings.node_extra_ca_certs,
    )
    try:
        listing = api.get_json("workspaces/list")
        ids = sorted(str(w["id"]) for w in listing)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise WindmillAuthError("Windmill rejected the token when listing workspaces") from None
        raise WindmillError(
            f"Windmill answered HTTP {exc.code} when listing workspaces",
            transient=exc.code >= 500,
        ) from None
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        raise WindmillError(
            f"Could not list workspaces at {settings.windmill_base_url}", transient=True
        ) from None
    results: list[SyncResult] = []
    failures: list[tuple[str, WindmillGitSyncError]] = []
    for workspace in ids:
        if not _WORKSPACE_ID.fullmatch(workspace):
            # It becomes a directory name: never one Windmill could steer.
            failures.append(
                (workspace, WindmillError("Windmill listed an invalid workspace id; skipped"))
            )
            continue
        one = dataclasses.replace(
            job, workspace=workspace, path_prefix=join_prefix(job.path_prefix, workspace)
        )
        try:
            results.append(sync_one(one, progress))
        except WindmillGitSyncError as exc:
            failures.append((workspace, exc))
    if failures:
        error = SyncError(
            f"{len(failures)} of {len(ids)} workspaces failed: "
            + "; ".join(f"{ws}: {exc.message}" for ws, exc in failures)
        )
        error.response_extra = {
            "workspaces": [r.to_dict() for r in results]
            + [
                {"workspace": ws, "success": False, "error": exc.code, "message": exc.message}
                for ws, exc in failures
            ]
        }
        raise error
    commits = [r.commit for r in results if r.commit]
    return SyncResult(
        "*",
        job.remote_url,
        job.branch,
        any(r.changed for r in results),
        commits[-1] if commits else None,
        (),
        duration_seconds=time.monotonic() - started,
        workspaces=tuple(results),
    )
