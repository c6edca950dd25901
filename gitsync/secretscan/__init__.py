"""Secrets in what a sync would push: detect-secrets, with the filters and detectors it lacks."""
