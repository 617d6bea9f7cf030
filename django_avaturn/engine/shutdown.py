"""The rows of this process's conversations, ended if the process exits with them running.

A server shutting down ends each conversation through its consumer: uvicorn
sends ``websocket.disconnect`` (1012), daphne cancels the application. daphne
4.2 skips the cancelling whenever a connection of about the last second has
no application of its own (a WebSocket's upgrade request, a finished HTTP
request not yet reaped): its ``kill_all_applications`` raises ``KeyError``
and its event loop stops with the conversations still running. Their
sockets drop with the process, which ends the Avaturn sessions, but no code
of the consumer's runs again. ``end_left_running`` runs at interpreter exit
and ends those rows (terminating their Avaturn sessions, usually answered
"already gone"), so no row stays live for a conversation that no longer
exists.

The consumer registers a row once its socket is accepted (``running``) and
removes it once its end is done (``done``).
"""

from __future__ import annotations

import atexit
import threading

from django.db import connections

from django_avaturn.logs import get_logger
from django_avaturn.models import EndReason, Session, sessions_database
from django_avaturn.sessions import ending

logger = get_logger(__name__)

EXIT_DETAIL = "The server process exited with the conversation running."

# Row pk -> the database it was read from (alias, NAME): a test database torn
# down before exit is not touched, nor a database of the same alias renamed.
_running: dict[int, tuple[str, str]] = {}
_lock = threading.Lock()


def running(pk: int) -> None:
    alias = sessions_database()
    with _lock:
        _running[pk] = (alias, str(connections[alias].settings_dict.get("NAME")))


def done(pk: int) -> None:
    with _lock:
        _running.pop(pk, None)


def left_running() -> list[int]:
    with _lock:
        return list(_running)


def end_left_running() -> None:
    """End the row of every conversation still registered (at exit: the loop has stopped).

    One ``end_sessions`` for them all: their terminates run
    ``TERMINATE_CONCURRENCY`` at a time, so many conversations do not hold
    the exit for long.
    """
    with _lock:
        left = list(_running.items())
        _running.clear()
    pks = [
        pk
        for pk, (alias, name) in left
        if alias in connections and str(connections[alias].settings_dict.get("NAME")) == name
    ]
    if not pks:
        return
    logger.warning("Ending %d session row(s) the server exited with running: %s", len(pks), pks)
    try:
        ending.end_sessions(
            Session.objects.filter(pk__in=pks), reason=EndReason.ENGINE_CLOSED, detail=EXIT_DETAIL
        )
    except Exception:  # the database is gone too: the expiry command ends them
        logger.exception("Could not end session rows %s at exit", pks)


atexit.register(end_left_running)
