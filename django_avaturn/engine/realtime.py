"""Opening OpenAI Realtime from the server (h-consumer's stand-in until h-bridge's lands).

``connect_realtime`` opens the socket with the ``openai`` SDK and sends one
``session.update``. Replaced by h-bridge's module at merge.
"""

from __future__ import annotations

import inspect
from typing import Any

from openai import AsyncOpenAI

from django_avaturn.conf import avaturn_settings
from django_avaturn.engine import protocol
from django_avaturn.exceptions import NotConfigured


async def connect_realtime(
    *,
    model: str,
    session_config: dict[str, Any],
    tools: list[dict[str, Any]],
    websocket_url: str | None,
) -> Any:
    api_key = avaturn_settings.OPENAI_API_KEY
    if not api_key:
        raise NotConfigured("The OpenAI API key is not set.")
    client = AsyncOpenAI(api_key=api_key, websocket_base_url=websocket_url)
    options: dict[str, Any] = {"model": model}
    if "max_retries" in inspect.signature(client.realtime.connect).parameters:
        options["max_retries"] = 0
    connection = await client.realtime.connect(**options).enter()
    session = dict(session_config)
    session["audio"] = {
        **session.get("audio", {}),
        "input": {
            **session.get("audio", {}).get("input", {}),
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad"},
        },
        "output": {
            **session.get("audio", {}).get("output", {}),
            "format": {"type": "audio/pcm", "rate": 24000},
        },
    }
    if tools:
        session["tools"] = tools
    await connection.send_raw(protocol.session_update(session))
    return connection
