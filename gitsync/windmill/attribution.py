"""Who changed what: authors and deployment messages from Windmill's API.

Windmill records the last editor of scripts (each version's ``created_by``),
flows (``edited_by``) and apps (their history) and, for these, the
deployment message. The backup uses them to commit each person's changes
under their own name. Attribution is a nicety: if Windmill cannot tell, the
change is committed under the request's identity, never dropped.
"""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass
from typing import Any

from gitsync.git.repo import Identity
from gitsync.windmill.api import WindmillApi
from gitsync.windmill.items import ItemRef

log = logging.getLogger(__name__)

# Beyond this many changed items of a kind, one listing beats one call each.
_PER_ITEM_LIMIT = 20
_PAGE = 1000


@dataclass(frozen=True)
class Attribution:
    identity: Identity
    username: str
    message: str | None = None


def attribute(api: WindmillApi, workspace: str, items: set[ItemRef]) -> dict[ItemRef, Attribution]:
    """Authors of the given (existing) items; items Windmill cannot attribute are left out."""
    try:
        return _attribute(api, workspace, items)
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "could not read authors from Windmill (%s); committing under the request's identity",
            type(exc).__name__,
        )
        return {}


def _attribute(api: WindmillApi, workspace: str, items: set[ItemRef]) -> dict[ItemRef, Attribution]:
    w = workspace
    editors: dict[ItemRef, tuple[str, str | None]] = {}
    for kind, endpoint, who in (
        ("script", "scripts/list", "created_by"),
        ("flow", "flows/list", "edited_by"),
    ):
        wanted = {i for i in items if i.kind == kind}
        for row in _rows(api, f"w/{w}/{endpoint}", {i.path for i in wanted}):
            ref = ItemRef(kind, row["path"])
            if ref in wanted and row.get(who):
                editors[ref] = (row[who], row.get("deployment_msg") or None)
    for ref in (i for i in items if i.kind == "app"):
        history = api.get_json(f"w/{w}/apps/history/p/{ref.path}", per_page=1)
        if history and history[0].get("created_by"):
            editors[ref] = (history[0]["created_by"], history[0].get("deployment_msg") or None)
    if not editors:
        return {}
    users = {u["username"]: u for u in api.get_json(f"w/{w}/users/list")}
    result = {}
    for ref, (username, message) in editors.items():
        user = users.get(username)
        if user and user.get("email"):
            name = user.get("name") or username
            result[ref] = Attribution(Identity(name, user["email"]), username, message)
    return result


def _rows(api: WindmillApi, endpoint: str, paths: set[str]) -> list[dict[str, Any]]:
    if not paths:
        return []
    if len(paths) <= _PER_ITEM_LIMIT:
        rows: list[dict[str, Any]] = []
        for path in sorted(paths):
            rows += api.get_json(endpoint, path_exact=path, with_deployment_msg="true")
        return rows
    rows, page = [], 1
    while True:
        batch = api.get_json(endpoint, page=page, per_page=_PAGE, with_deployment_msg="true")
        rows += batch
        if len(batch) < _PAGE:
            return rows
        page += 1
