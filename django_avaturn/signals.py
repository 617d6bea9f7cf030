"""Signals a project can connect to.

``session_started``
    Sent after Avaturn created a session and its row is live.
    Arguments: ``sender`` (the ``Session`` class), ``session`` (the row),
    ``request`` (the ``HttpRequest`` that started it, or ``None``).

``session_ended``
    Sent once per session that went live, after its row reached a final
    status (not for a start that failed or was stopped before going live,
    nor for the sessions of a deleted user, whose rows are gone).
    Arguments: ``sender`` (the ``Session`` class), ``session`` (the row),
    ``reason`` (an ``EndReason`` value).

Both are sent outside any transaction of ours; a receiver that raises does
not undo the start or the end (``send_robust`` is used and failures logged).
"""

from django.dispatch import Signal

session_started = Signal()
session_ended = Signal()
