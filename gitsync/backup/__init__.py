"""One sync of one target: pull the workspace, stage, commit and push it, and what they use."""
