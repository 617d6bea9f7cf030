"""Telling a site engine session's consumer something, through the channel layer.

Each consumer joins its session's group (``group_name``); anything in the
site (a view, the end of a session, ``say()``) sends to that group, from any
process or host when the layer is shared (``channels_redis``). Importable
without Channels: then there is no layer, and the senders say so
(``NoChannelLayer`` from the strict ones, ``False`` from the others).

Messages (the consumer's handler is the type with "." as "_"):

- ``avaturn.engine.end``: the site ended the session; close both sockets now.
- ``avaturn.engine.page``: the page's message ``data`` (a dict) goes to the model
  as the visitor's input; with ``respond`` true the model answers it.
- ``avaturn.engine.say``: the avatar speaks ``text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync

from django_avaturn.logs import get_logger

logger = get_logger(__name__)

END = "avaturn.engine.end"
PAGE = "avaturn.engine.page"
SAY = "avaturn.engine.say"


# A message from the page, as compact JSON: it goes into the model's context.
PAGE_MESSAGE_MAX_BYTES = 4000


def message_size(data: dict[str, Any]) -> int:
    """What ``data`` weighs against ``PAGE_MESSAGE_MAX_BYTES``: its compact JSON in UTF-8."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


class NoChannelLayer(Exception):
    """Channels is not installed, or ``CHANNEL_LAYERS`` configures no layer."""


def group_name(row_pk: int) -> str:
    """The group of one session row's consumer (letters, digits, "." and "_" only)."""
    return f"avaturn.engine.{int(row_pk)}"


def get_layer() -> Any | None:
    """The default channel layer; None without Channels or without ``CHANNEL_LAYERS``."""
    try:
        from channels.layers import get_channel_layer
    except ImportError:
        return None
    return get_channel_layer()


def _require_layer() -> Any:
    layer = get_layer()
    if layer is None:
        raise NoChannelLayer("No channel layer: install Channels and set CHANNEL_LAYERS.")
    return layer


async def send(row_pk: int, message: dict[str, Any]) -> None:
    """Send ``message`` to the consumer of row ``row_pk`` (if one listens); ``NoChannelLayer``."""
    await _require_layer().group_send(group_name(row_pk), message)


def send_sync(row_pk: int, message: dict[str, Any]) -> None:
    """``send`` from synchronous code (a view, a signal receiver, a task queue)."""
    async_to_sync(send)(row_pk, message)


def page_message(data: dict[str, Any], *, respond: bool = False) -> dict[str, Any]:
    return {"type": PAGE, "data": data, "respond": respond}


def say_message(text: str) -> dict[str, Any]:
    return {"type": SAY, "text": text}


def end_message(reason: str) -> dict[str, Any]:
    return {"type": END, "reason": reason}


def tell_ended(rows: Iterable[tuple[int, str]]) -> None:
    """The site ended these site-engine rows (pk, end reason): their consumers close at once.

    Best effort, never raises: the end is recorded already, and Avaturn's
    terminate (or the expiry command's) closes the engine socket anyway.
    """
    pending = list(rows)
    if not pending:
        return
    layer = get_layer()
    if layer is None:
        return

    async def tell() -> None:
        for pk, reason in pending:
            await layer.group_send(group_name(pk), end_message(reason))

    try:
        async_to_sync(tell)()
    except Exception:
        logger.exception("Could not tell the site engine of %d ended session(s)", len(pending))
