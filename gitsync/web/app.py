"""The HTTP layer's factory: a thin Flask app over the core, which knows nothing of HTTP.

``create_app`` builds the components (``components.py``), wraps the WSGI app
in the drain and the access log, checks every request on its way in
(``inbound.py``), registers the routes (``routes/``) and the one mapping from
errors to answers (``errors.py``). Nothing happens at import time.
"""

from __future__ import annotations

from flask import Flask

from gitsync.backup.service import SyncService
from gitsync.config import Settings
from gitsync.web import access_log, components, errors, inbound
from gitsync.web.routes.ops import ops
from gitsync.web.routes.recovery import recovery
from gitsync.web.routes.syncs import syncs


def create_app(settings: Settings, service: SyncService | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    built = components.build(settings, service or SyncService(settings))
    app.extensions[components.EXTENSION] = built
    # Outermost: the access log sees the drain's count end, and every answer.
    app.wsgi_app = access_log.wrap(built.drain.wrap(app.wsgi_app))  # type: ignore[method-assign,assignment]

    @app.before_request
    def check_request() -> None:
        inbound.check(settings, built.drain)

    for blueprint in (ops, syncs, recovery):
        app.register_blueprint(blueprint)
    errors.register(app, settings.max_body_bytes)
    return app
