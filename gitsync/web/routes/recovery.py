"""Getting a workspace back: POST /restore, and an item's history (GET and POST /history).

A restore and a history fetch write (into the workspace, into the target's
copy): each runs as a job in its target's lane, under the lock its syncs
take, and leaves a job record. Reading the history already fetched is a
plain read.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from gitsync.inputs.requests import (
    parse_history_query,
    parse_history_request,
    parse_restore_request,
)
from gitsync.jobs.tasks import HISTORY, RESTORE
from gitsync.recovery.history import item_history
from gitsync.web.components import current
from gitsync.web.inbound import json_body, waited

recovery = Blueprint("recovery", __name__)


@recovery.post("/restore")
def restore() -> Any:
    c = current()
    job = parse_restore_request(json_body(), c.settings.git_allowed_hosts).to_job()
    task = c.runner.submit_task(
        RESTORE,
        job.key(c.settings),
        workspace=job.workspace,
        remote=job.remote_url,
        branch=job.branch,
        work=lambda: c.restorer.restore(job),
        describe=lambda result: result.to_dict(),
    )
    result = waited(task.job_id, task.future, f"Restore into workspace '{job.workspace}' queued")
    if isinstance(result, Response):
        return result
    verb = "Restored" if result.applied else "Dry run: would restore"
    return jsonify(
        success=True,
        message=f"{verb} {len(result.changes)} changes into workspace '{result.workspace}' "
        f"from '{result.git_ref}'",
        job_id=task.job_id,
        **result.to_dict(),
    )


@recovery.get("/history")
def history() -> Any:
    c = current()
    query = parse_history_query(dict(request.args))
    found = item_history(c.settings, query, c.service.locks)
    return jsonify(success=True, workspace=query.workspace, path=query.item_path, **found.to_dict())


@recovery.post("/history")
def deepened_history() -> Any:
    c = current()
    query = parse_history_request(json_body(), c.settings.git_allowed_hosts).to_query()
    # It fetches into the target's copy: a job in the target's lane, like a sync.
    task = c.runner.submit_task(
        HISTORY,
        query.key(c.settings),
        workspace=query.workspace,
        remote=query.remote_url,
        branch=query.branch,
        work=lambda: item_history(c.settings, query, c.service.locks),
    )
    found = waited(task.job_id, task.future, f"History of '{query.item_path}' queued")
    if isinstance(found, Response):
        return found
    return jsonify(
        success=True,
        workspace=query.workspace,
        path=query.item_path,
        job_id=task.job_id,
        **found.to_dict(),
    )
