"""Who changed what: authors and deployment messages from Windmill's API.

Windmill records the last editor of scripts (each version's ``created_by``),
flows (``edited_by``), apps (their history), schedules and triggers
(``edited_by``) and, for scripts, flows and apps, the deployment message.
It records no editor for resources (only their creator), variables,
folders, resource types, groups or settings.

Every recorded username and message reaches the commit message. The item
goes into its editor's own commit only when the workspace's user list names
that user with an email; otherwise (a user since removed, or without an
email) it goes into the request identity's commit, which still says who
changed it and why. If Windmill cannot tell at all, the change is committed
under the request's identity, never dropped.
"""

from __future__ import annotations

import logging
import urllib.error
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gitsync.git.repo import Identity
from gitsync.windmill.api import WindmillApi
from gitsync.windmill.items import ItemChange, ItemRef, trigger_kind

log = logging.getLogger(__name__)

# Beyond this many changed items of a kind, one listing beats one call each.
_PER_ITEM_LIMIT = 20
_PAGE = 1000
_NOT_FOUND = 404


@dataclass(frozen=True)
class Attribution:
    username: str
    message: str | None = None
    # The commit author, when the workspace's user list names the user with an email.
    identity: Identity | None = None


def attribute(
    api: WindmillApi, workspace: str, changes: Iterable[ItemChange]
) -> dict[ItemRef, Attribution]:
    """Editors of the given (existing) items; items Windmill records no editor for are left out."""
    try:
        editors = _editors(api, workspace, list(changes))
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning(
            "could not read authors from Windmill (%s); committing under the request's identity",
            type(exc).__name__,
        )
        return {}
    if not editors:
        return {}
    try:
        users = {u["username"]: u for u in api.get_json(f"w/{workspace}/users/list")}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
        # Without names the messages and usernames are still worth keeping.
        log.warning("could not read Windmill's user list (%s)", type(exc).__name__)
        users = {}
    result = {}
    for ref, (username, message) in editors.items():
        user = users.get(username)
        identity = None
        if user and user.get("email"):
            identity = Identity(user.get("name") or username, user["email"])
        result[ref] = Attribution(username, message, identity)
    return result


def _editors(
    api: WindmillApi, workspace: str, changes: list[ItemChange]
) -> dict[ItemRef, tuple[str, str | None]]:
    w = workspace
    items = {c.item for c in changes}
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
    # Schedules and triggers record an editor but no deployment message. A
    # trigger's endpoint depends on its kind, which only its file name tells.
    by_endpoint: dict[str, set[ItemRef]] = {}
    for change in changes:
        if change.item.kind == "schedule":
            by_endpoint.setdefault("schedules", set()).add(change.item)
        elif change.item.kind == "trigger":
            trigger = trigger_kind(change.files)
            if trigger is not None:
                by_endpoint.setdefault(f"{trigger}_triggers", set()).add(change.item)
    for endpoint, wanted in by_endpoint.items():
        for row in _objects(api, f"w/{w}/{endpoint}", {i.path for i in wanted}):
            found = next((i for i in wanted if i.path == row.get("path")), None)
            if found is not None and row.get("edited_by"):
                editors[found] = (row["edited_by"], None)
    return editors


def _rows(api: WindmillApi, endpoint: str, paths: set[str]) -> list[dict[str, Any]]:
    if not paths:
        return []
    if len(paths) <= _PER_ITEM_LIMIT:
        rows: list[dict[str, Any]] = []
        for path in sorted(paths):
            rows += api.get_json(endpoint, path_exact=path, with_deployment_msg="true")
        return rows
    return _pages(api, endpoint, with_deployment_msg="true")


def _objects(api: WindmillApi, base: str, paths: set[str]) -> list[dict[str, Any]]:
    """The items at ``paths`` of ``base`` (``.../schedules``): one GET each, or the listing."""
    if len(paths) > _PER_ITEM_LIMIT:
        return _pages(api, f"{base}/list")
    rows = []
    for path in sorted(paths):
        try:
            rows.append(api.get_json(f"{base}/get/{path}"))
        except urllib.error.HTTPError as exc:
            if exc.code != _NOT_FOUND:  # gone since the pull: nobody to name
                raise
    return rows


def _pages(api: WindmillApi, endpoint: str, **params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        batch = api.get_json(endpoint, page=page, per_page=_PAGE, **params)
        rows += batch
        if len(batch) < _PAGE:
            return rows
        page += 1
