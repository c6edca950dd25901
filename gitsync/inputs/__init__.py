"""What callers ask for: request models checked once, for the HTTP API and the command line."""
