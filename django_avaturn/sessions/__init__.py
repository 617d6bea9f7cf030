"""The lifecycle of a session row: planning, starting, ending, expiring, and what it leaves."""
