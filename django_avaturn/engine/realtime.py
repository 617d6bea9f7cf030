"""Opening OpenAI Realtime from the server, for the site engine's bridge.

The ``openai`` SDK's realtime client connects with the site's key (never sent
anywhere else); one ``session.update`` then fixes what the bridge relies on: PCM16 at
24 kHz both ways, server VAD turn detection, the input transcription when transcripts
are kept, and the registry's tools. The bridge sends prepared JSON strings and reads
raw events: the SDK's typed helpers cost far more CPU. Each event goes through the
SDK connection's own ``websockets`` connection (``_DirectSocket``) where it has one.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from django.views.decorators.debug import sensitive_variables
from openai import AsyncOpenAI

# Imported with this module, not on the first connect: the SDK's realtime types take
# tens to hundreds of milliseconds to import, which would land on a live call.
from openai.resources.realtime.realtime import AsyncRealtimeConnection  # noqa: F401
from openai.types.websocket_connection_options import WebSocketConnectionOptions
from websockets.asyncio.client import ClientConnection

from django_avaturn.conf import avaturn_settings
from django_avaturn.engine import protocol
from django_avaturn.engine.bridge import RealtimeSocket
from django_avaturn.exceptions import NotConfigured

PCM_24K: dict[str, Any] = {"type": "audio/pcm", "rate": protocol.SAMPLE_RATE}
# Used when the session asks for none: OpenAI's server VAD, which also tells the
# bridge when the visitor starts speaking (barge-in).
DEFAULT_TURN_DETECTION: dict[str, Any] = {"type": "server_vad"}
DEFAULT_TRANSCRIPTION: dict[str, Any] = {"model": "gpt-4o-mini-transcribe"}
# Seconds a close waits for OpenAI's side of the closing handshake before dropping the
# connection. A peer that stopped reading never takes the close frame, and ``websockets``
# waits for the frame to be written before its own close timeout starts.
CLOSE_WAIT = 2.0


class _NoDebugLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The socket's logger, never at DEBUG.

    ``websockets`` logs every handshake header at DEBUG, the ``Authorization: Bearer``
    carrying the site's key among them, and every frame after it. It reads the level
    once per connection (``isEnabledFor(DEBUG)``), so this turns both off whatever the
    site's logging configuration; INFO and above still reach ``websockets.client``.
    """

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_SOCKET_OPTIONS = cast(
    WebSocketConnectionOptions,
    {"logger": _NoDebugLogger(logging.getLogger("websockets.client"), {})},
)


def session_for_bridge(
    session_config: Mapping[str, Any], tools: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The GA session the bridge needs, from the site's (``SessionPlan.realtime_session``).

    The audio formats are forced (the bridge never resamples); turn detection and the
    input transcription are the site's when it set them.
    """
    session = copy.deepcopy(dict(session_config))
    session["type"] = "realtime"
    audio = session.setdefault("audio", {})
    audio_in = audio.setdefault("input", {})
    audio_out = audio.setdefault("output", {})
    audio_in["format"] = dict(PCM_24K)
    audio_out["format"] = dict(PCM_24K)
    if audio_in.get("turn_detection") is None:
        audio_in["turn_detection"] = dict(DEFAULT_TURN_DETECTION)
    if avaturn_settings.TRANSCRIPTS_ENABLED and not audio_in.get("transcription"):
        audio_in["transcription"] = dict(DEFAULT_TRANSCRIPTION)
    if tools:
        session["tools"] = [dict(tool) for tool in tools]
        session.setdefault("tool_choice", "auto")
    return session


class _DirectSocket:
    """An SDK realtime connection, each event sent and read on its ``websockets`` connection.

    The SDK's ``send_raw`` admits every message through its reconnection send queue (a
    receipt, two locks, the current task's id): a few microseconds per message, and the
    bridge sends fifty audio frames a second per conversation. The engine never asks the
    SDK to reconnect (Avaturn's socket could not follow a new OpenAI session), so that
    queue stays empty and the SDK's send comes down to the connection's own; its
    ``recv_bytes`` likewise. ``close`` is the SDK's, bounded by ``CLOSE_WAIT``.
    """

    __slots__ = ("_connection", "_websocket")

    def __init__(self, connection: Any, websocket: ClientConnection) -> None:
        self._connection = connection
        self._websocket = websocket

    async def send_raw(self, data: bytes | str) -> None:
        await self._websocket.send(data)

    async def recv_bytes(self) -> bytes:
        return await self._websocket.recv(decode=False)

    async def close(self, *, code: int = 1000, reason: str = "") -> None:
        """The SDK's close; the connection dropped if its handshake takes over ``CLOSE_WAIT``
        or the close is cancelled: either way nothing is left open."""
        closing = asyncio.ensure_future(self._connection.close(code=code, reason=reason))
        try:
            done, _ = await asyncio.wait((closing,), timeout=CLOSE_WAIT)
        except BaseException:
            self._drop(closing)
            raise
        if not done:
            self._drop(closing)
            return
        closing.result()

    def _drop(self, closing: asyncio.Future[None]) -> None:
        closing.cancel()
        closing.add_done_callback(_retrieve)  # a close that failed meanwhile: nothing to say
        self._websocket.transport.abort()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _direct(connection: Any) -> RealtimeSocket:
    """``connection`` as a ``_DirectSocket`` when it holds a ``websockets`` connection and
    reconnects never; otherwise itself."""
    websocket = getattr(connection, "_connection", None)
    if isinstance(websocket, ClientConnection) and getattr(connection, "_make_ws", None) is None:
        return _DirectSocket(connection, websocket)
    return cast(RealtimeSocket, connection)


def realtime_base_url() -> str | None:
    """OpenAI Realtime's address by ``OPENAI_BASE_URL``: its scheme made ``ws``/``wss``.

    The site's OpenAI calls and its Realtime socket go the same way (a proxy,
    the loopback fake): a site that moved one did not mean the other to
    reach api.openai.com. None without ``OPENAI_BASE_URL``: the SDK's own.
    """
    base: str | None = avaturn_settings.OPENAI_BASE_URL
    if not base:
        return None
    scheme, separator, rest = base.partition("://")
    return f"{'ws' if scheme.lower() == 'http' else 'wss'}{separator}{rest}"


@functools.lru_cache(maxsize=4)
def _client(api_key: str, websocket_url: str | None) -> AsyncOpenAI:
    """One SDK client per key and address for the process, shared by every conversation.

    Making one costs about 20 ms of CPU (its HTTP client's TLS context), a burst on the
    event loop when many conversations start at once. The realtime connection only
    reads the key and the address from it and opens a socket of its own, so any loop
    may use the shared client; a new key (rotated in the settings) makes a new one.
    """
    return AsyncOpenAI(api_key=api_key, websocket_base_url=websocket_url, max_retries=0)


@sensitive_variables("api_key")
async def connect_realtime(
    *,
    model: str,
    session_config: Mapping[str, Any],
    tools: Sequence[Mapping[str, Any]],
    websocket_url: str | None,
) -> RealtimeSocket:
    """Open OpenAI Realtime and configure it; the caller closes what this returns.

    ``websocket_url`` (``SITE_ENGINE["OPENAI_WEBSOCKET_URL"]``) replaces the SDK's own
    address (a loopback fake in tests); without it, ``OPENAI_BASE_URL`` gives it
    (``realtime_base_url``). Raises ``NotConfigured`` without a key; the SDK's and
    ``websockets``' errors when the connection fails.
    """
    api_key = avaturn_settings.OPENAI_API_KEY
    if not api_key:
        raise NotConfigured(
            "AVATURN['OPENAI_API_KEY'] is not set and the OPENAI_API_KEY environment "
            "variable is empty."
        )
    client = _client(api_key, websocket_url or realtime_base_url())
    connection = await client.realtime.connect(
        model=model, websocket_connection_options=_SOCKET_OPTIONS
    ).enter()
    try:
        await connection.send_raw(
            protocol.session_update(session_for_bridge(session_config, tools))
        )
    except BaseException:
        await _direct(connection).close()
        raise
    return _direct(connection)
