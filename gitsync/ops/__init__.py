"""Operating the service: metrics, alerts, logs and readiness."""
