"""Getting a workspace back from its backup: restore into Windmill, and the history of an item."""
