"""Workspace "*": every workspace the token can see, each under its own sub-directory."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import urllib.error
from collections.abc import Callable

from gitsync.backup.job import Progress, SyncJob, SyncResult, join_prefix
from gitsync.config import Settings
from gitsync.deadline import Deadline
from gitsync.errors import (
    NoWorkspaces,
    SyncTimeout,
    WindmillAuthError,
    WindmillError,
    WindmillGitSyncError,
    WorkspacesFailed,
)
from gitsync.windmill.api import WindmillApi

log = logging.getLogger(__name__)

_WORKSPACE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,49}")


def sync_every_workspace(
    settings: Settings,
    job: SyncJob,
    progress: Progress | None,
    sync_one: Callable[[SyncJob, Progress | None, Deadline], SyncResult],
    deadline: Deadline,
) -> SyncResult:
    """Each workspace the token can see, under its own sub-directory, one after another.

    One deadline bounds them all; each workspace's outcome is reported, and
    one failing (even unforeseen) does not stop the others.
    """
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
    if not ids:
        # A backup of nothing must not read as a success (nor refresh the staleness gauge).
        raise NoWorkspaces(
            "The Windmill token lists no workspace: nothing was backed up. Give the token "
            "access to the workspaces to back up, or name one workspace"
        )
    results: list[SyncResult] = []
    failures: list[tuple[str, WindmillGitSyncError]] = []
    for workspace in ids:
        if not _WORKSPACE_ID.fullmatch(workspace):
            # It becomes a directory name: never one Windmill could steer.
            failures.append(
                (workspace, WindmillError("Windmill listed an invalid workspace id; skipped"))
            )
            continue
        if deadline.remaining() <= 0:
            failures.append(
                (
                    workspace,
                    SyncTimeout("the sync of every workspace (not started)", deadline.seconds),
                )
            )
            continue
        one = dataclasses.replace(
            job, workspace=workspace, path_prefix=join_prefix(job.path_prefix, workspace)
        )
        try:
            results.append(sync_one(one, progress, deadline))
        except WindmillGitSyncError as exc:
            failures.append((workspace, exc))
        except Exception:
            # One workspace's unforeseen failure must not cost the others their
            # backup: logged with its traceback here, reported as internal_error.
            log.exception("the sync of workspace %s crashed", workspace)
            failures.append(
                (workspace, WindmillGitSyncError("Internal error; see the service log"))
            )
    if failures:
        raise WorkspacesFailed(
            f"{len(failures)} of {len(ids)} workspaces failed: "
            + "; ".join(f"{ws}: {exc.message}" for ws, exc in failures),
            [{**r.to_dict(), "success": True} for r in results]
            + [
                {"workspace": ws, "success": False, "error": exc.code, "message": exc.message}
                for ws, exc in failures
            ],
        )
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
