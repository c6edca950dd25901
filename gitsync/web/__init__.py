"""The HTTP layer: the app factory, its blueprints, the one error table, the server."""
