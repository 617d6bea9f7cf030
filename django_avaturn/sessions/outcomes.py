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
    # Another caller's end was in flight: it finishes the row, or, if its
    # terminate fails, leaves it ending for the expiry command, never live.
    ALREADY_ENDING = "already being ended"
    # The upstream call failed: the row is live again (an end its asker
    # retries), or still ending, and the expiry command's next run retries it.
    FAILED = "failed"
    SKIPPED = "skipped"  # already ended, or another caller is ending it
    WOULD_END = "would end"  # dry run
