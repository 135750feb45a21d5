"""Repositories: the only code that writes SQL. Each takes a connection (the unit of work)."""
