"""The HTTP layer: the Flask app factory, request models, OpenAPI, status page and server."""
