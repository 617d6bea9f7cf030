"""The baseline, a bare asyncio forwarder: ``python -m benchmarks.engine.forwarder``.

The least any engine between Avaturn and OpenAI Realtime must do, with
nothing else: a plain ``websockets`` server (on uvloop, as uvicorn runs) that
opens a ``websockets`` connection to OpenAI per conversation, sends one
``session.update``, forwards Avaturn's binary frames as
``input_audio_buffer.append`` with base64, parses Avaturn's text frames and
ignores them, decodes ``response.output_audio.delta`` to binary frames with a
segment opened before a response's first audio and closed at its end, and
answers a function call from a trivial async tool
(``conversation.item.create`` with the output, then ``response.create``). No
authentication, no database, no tool checks, no barge-in bookkeeping.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import json
import uuid

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from benchmarks.engine.frames import dumps, run

SESSION_UPDATE = dumps(
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {"type": "server_vad"},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}},
            },
        },
    }
)
RESPONSE_CREATE = dumps({"type": "response.create"})


async def trivial_tool(arguments: str) -> str:
    return dumps({"text": json.loads(arguments).get("text", "")})


class Forwarder:
    def __init__(self, openai_url: str) -> None:
        self.openai_url = openai_url

    async def handler(self, avaturn: ServerConnection) -> None:
        async with connect(
            self.openai_url,
            additional_headers={"Authorization": "Bearer sk-bench"},
            max_size=None,
            compression=None,
        ) as openai:
            await openai.send(SESSION_UPDATE)
            pumps = {
                asyncio.create_task(self.up(avaturn, openai)),
                asyncio.create_task(self.down(openai, avaturn)),
            }
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
        await avaturn.close()

    async def up(self, avaturn: ServerConnection, openai: ClientConnection) -> None:
        b2a = binascii.b2a_base64
        with contextlib.suppress(ConnectionClosed):
            async for message in avaturn:
                if isinstance(message, bytes):
                    await openai.send(
                        '{"type":"input_audio_buffer.append","audio":"'
                        + b2a(message, newline=False).decode()
                        + '"}'
                    )
                else:
                    json.loads(message)  # segment acknowledgements: nothing to do

    async def down(self, openai: ClientConnection, avaturn: ServerConnection) -> None:
        a2b = binascii.a2b_base64
        segment: str | None = None
        tools: set[asyncio.Task[None]] = set()
        with contextlib.suppress(ConnectionClosed):
            async for raw in openai:
                event = json.loads(raw)
                kind = event["type"]
                if kind == "response.output_audio.delta":
                    if segment is None:
                        segment = uuid.uuid4().hex
                        await avaturn.send(
                            dumps({"type": "avatar.speech.segment.create", "segment_uid": segment})
                        )
                    await avaturn.send(a2b(event["delta"]))
                elif kind in ("response.output_audio.done", "response.done"):
                    if segment is not None:
                        await avaturn.send(
                            dumps({"type": "avatar.speech.segment.close", "segment_uid": segment})
                        )
                        segment = None
                elif kind == "response.function_call_arguments.done":
                    task = asyncio.create_task(
                        self.call(openai, event["call_id"], event["arguments"])
                    )
                    tools.add(task)
                    task.add_done_callback(tools.discard)

    async def call(self, openai: ClientConnection, call_id: str, arguments: str) -> None:
        output = await trivial_tool(arguments)
        with contextlib.suppress(ConnectionClosed):
            await openai.send(
                dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "function_call_output",
                            "call_id": call_id,
                            "output": output,
                        },
                    }
                )
            )
            await openai.send(RESPONSE_CREATE)


async def serve_forever(port: int, openai_url: str) -> None:
    forwarder = Forwarder(openai_url)
    async with serve(forwarder.handler, "127.0.0.1", port, max_size=None, compression=None):
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--openai-url", required=True, help="ws://127.0.0.1:PORT/v1/realtime")
    args = parser.parse_args()
    run(serve_forever(args.port, args.openai_url))


if __name__ == "__main__":
    main()
