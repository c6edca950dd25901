"""Accepted work: the runner's queue and lanes, the job store, and where each run's outcome goes."""
