"""The sync itself as named steps, the runner and its queue, the job store, restore and history."""
