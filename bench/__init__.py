"""Benchmarks of windmill-git-sync against the bare wmill CLI: `make bench`."""
