"""Helpers of the container test (tests/test_container.py)."""
