"""Backups: POST /sync, and the job records every accepted job leaves (GET /jobs)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from gitsync.backup.job import success_message
from gitsync.errors import RequestError
from gitsync.inputs.requests import parse_sync_request
from gitsync.web.components import current
from gitsync.web.drain import JOB_ID_KEY
from gitsync.web.errors import error_response
from gitsync.web.inbound import accepted, json_body, waited

syncs = Blueprint("syncs", __name__)

_JOB_ID = re.compile(r"[0-9a-f]{32}")
# A sync that pushed everything but the items held for secrets (restic's exit
# code 3, borg's warning): not 2xx, so that a caller checking only the status
# (the Windmill kit's script) fails its run and the owner sees it.
HELD_STATUS = 422


@syncs.post("/sync")
def sync() -> Any:
    c = current()
    req = parse_sync_request(json_body(), c.settings.git_allowed_hosts)
    ticket = c.runner.submit(req.to_job())
    request.environ[JOB_ID_KEY] = ticket.job_id
    queued = f"Sync of workspace '{req.workspace}' queued"
    if not req.wait or "respond-async" in request.headers.get("Prefer", ""):
        return accepted(ticket.job_id, queued, coalesced=ticket.coalesced)
    # The runner logs and counts the run.
    result = waited(ticket.job_id, ticket.run.future, queued, coalesced=ticket.coalesced)
    if isinstance(result, Response):
        return result
    held = bool(result.all_held)
    response = jsonify(
        success=not held,
        message=success_message(result),
        job_id=ticket.job_id,
        coalesced=ticket.coalesced,
        # Pushed, but not whole: a caller that reads only the status or
        # "success" must not take it for a complete backup.
        **({"error": "secrets_held", "partial": True} if held else {}),
        **result.to_dict(),
    )
    response.status_code = HELD_STATUS if held else 200
    return response


@syncs.get("/jobs/<job_id>")
def job(job_id: str) -> Any:
    c = current()
    record = c.store.get(job_id) if _JOB_ID.fullmatch(job_id) else None
    if record is None:
        return error_response(
            404,
            "not_found",
            f"No such job (the history keeps the last {c.settings.job_history} jobs)",
        )
    return jsonify(record)


@syncs.get("/jobs")
def jobs() -> Any:
    workspace = request.args.get("workspace")
    try:
        limit = min(max(int(request.args.get("limit", "50")), 1), 500)
    except ValueError:
        raise RequestError("Invalid limit: must be a number", field="limit") from None
    return jsonify(jobs=current().store.recent(workspace=workspace, limit=limit))
