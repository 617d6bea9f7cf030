"""Server-side speech: make a live avatar say something (``say``).

Through Avaturn's tasks endpoint, for a site's view, signal receiver or task
queue; for the site engine, through the channel layer to the consumer that
holds the session's sockets, which asks the model to speak it. Never
retried: a task whose answer was lost may have been queued, and a retry
could say the text twice.
"""

from __future__ import annotations

import uuid

from django.db import DatabaseError

from django_avaturn.engine import layer
from django_avaturn.exceptions import (
    EngineIgnoresTasks,
    NotConfigured,
    SessionNotLive,
    StorageUnavailable,
    UpstreamError,
)
from django_avaturn.models import Engine, Session, SessionStatus
from django_avaturn.sessions.engines import TASK_ENGINES
from django_avaturn.upstream.clients import get_avaturn_client

# Characters one ``say()`` may send: a few spoken minutes, well inside a request.
SAY_MAX_LENGTH = 4000


def say(session: Session, text: str) -> str:
    """Queue ``text`` for the avatar of a live ``session`` to speak; Avaturn's task id.

    Raises ``ValueError`` (``text`` is not a non-empty string of at most
    ``SAY_MAX_LENGTH`` characters), ``SessionNotLive`` (the row is not live,
    or Avaturn no longer knows the session), ``EngineIgnoresTasks`` (Cartesia
    and external engines do nothing with a task), ``UpstreamError`` or
    ``UpstreamTimeout`` (Avaturn failed; the text may or may not be queued),
    ``StorageUnavailable``; for the site engine ``NotConfigured`` (no channel
    layer). The site engine's id is ours (its text goes through the channel
    layer, not Avaturn's tasks), and the engine speaks it when its consumer
    receives it.
    """
    if not isinstance(text, str):
        raise ValueError(f"say() takes a string, not {type(text).__name__}.")
    if not text.strip():
        raise ValueError("say() needs a non-empty text.")
    if len(text) > SAY_MAX_LENGTH:
        raise ValueError(f"say() takes at most {SAY_MAX_LENGTH} characters, not {len(text)}.")
    try:
        # Read now: the row in hand may be stale (ended by the visitor, staff, expiry).
        current = (
            Session.objects.primary()
            .filter(pk=session.pk)
            .values_list("status", "session_id", "engine")
            .first()
        )
    except DatabaseError as exc:
        raise StorageUnavailable() from exc
    if current is None:
        raise SessionNotLive()
    status, session_id, engine = current
    if status != SessionStatus.LIVE or not session_id:
        raise SessionNotLive()
    if engine == Engine.SITE:
        try:
            layer.send_sync(session.pk, layer.say_message(text))
        except layer.NoChannelLayer as exc:
            raise NotConfigured(str(exc)) from None
        return uuid.uuid4().hex
    if engine not in TASK_ENGINES:
        raise EngineIgnoresTasks()
    try:
        return get_avaturn_client().create_task(session_id, text)
    except UpstreamError as exc:
        if exc.upstream_status == 404:
            # Avaturn ended it on its own (the visitor left, max_duration); the
            # expiry command records the end.
            raise SessionNotLive() from None
        raise
