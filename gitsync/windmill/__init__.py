"""Everything Windmill: the pinned wmill CLI and its one process chokepoint, the API, items."""
