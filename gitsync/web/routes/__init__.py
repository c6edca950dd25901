"""The HTTP routes as Flask blueprints: probes and monitoring, syncs and jobs, recovery."""
