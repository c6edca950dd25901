"""Everything Git: the service's copy of each target repository, the commit and the push."""
