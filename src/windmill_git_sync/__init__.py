"""Back up Windmill workspaces to Git."""
