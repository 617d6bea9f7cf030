"""How an attempt to end a session came out: one vocabulary for every way in.

``end_session()`` returns one of these for a single session; the bulk paths
(the admin action, the expiry command, the receivers) report one per row.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    TERMINATED = "terminated"  # Avaturn ended it just now
    ALREADY_GONE = "already gone"  # Avaturn answered 404: it had ended by itself
    MARKED = "marked"  # recorded as ended without an upstream call
    # Claimed while starting: its own request terminates what Avaturn creates
    # (and leaves it for the expiry command if that fails). Nothing ended yet.
    STOPPED = "stopped while starting"
    # The upstream call failed: the row is live again, or (an end already
    # asked for) still ending, and a later expiry run retries it.
    FAILED = "failed"
    SKIPPED = "skipped"  # already ended, or another caller is ending it
    WOULD_END = "would end"  # dry run
