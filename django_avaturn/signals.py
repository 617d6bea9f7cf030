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

from __future__ import annotations

from typing import Any

from django.dispatch import Signal

from django_avaturn.logs import get_logger

logger = get_logger(__name__)

session_started = Signal()
session_ended = Signal()

# For the log: a Signal's repr is "<Signal object at 0x...>".
_SIGNAL_NAMES = {session_started: "session_started", session_ended: "session_ended"}


def send_logged(signal: Signal, **kwargs: Any) -> None:
    """Send ``signal`` for a ``Session``; log, never raise, what a receiver raises."""
    # Imported here: a project may import its signals before the app registry is ready.
    from django_avaturn.models import Session

    for receiver, response in signal.send_robust(sender=Session, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "A %s receiver (%r) raised %s",
                _SIGNAL_NAMES.get(signal, "signal"),
                receiver,
                type(response).__name__,
                exc_info=response,
            )
