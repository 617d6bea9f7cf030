"""A stand-in for OpenAI Realtime that times what reaches it: ``python -m benchmarks.engine.peer``.

Speaks enough of the Realtime GA protocol for a bridge: ``session.created``
on connect, ``session.updated`` for a ``session.update``, and a steady stream
of responses, each ``response.created``, 50 ``response.output_audio.delta``
(one second of 20 ms frames, at 50 per second, paced from the connection's
start so they never drift), ``response.output_audio.done``, ``response.done``.
Every ``TOOL_EVERY``-th response is a function call instead
(``response.function_call_arguments.done`` of the benchmark's ``bench_echo``
tool, no audio); the time from sending it to the ``function_call_output`` item
coming back is the tool's round trip. The audio keeps flowing meanwhile (the
peer ignores ``response.create``), as a bridge must keep it flowing.

Each ``input_audio_buffer.append`` is timed from the stamp in its audio
(``frames``): its one-way latency from the client's send. A connection to
``/_stats`` sends ``{"from": ns, "to": ns}`` and gets the latencies of what
arrived in that window (and what arrived before it is forgotten).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from benchmarks.engine.frames import (
    FRAME_MS,
    FRAMES_PER_S,
    dumps,
    frame_b64,
    percentiles,
    read_stamp_b64,
    run,
)

APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
TOOL_EVERY = 3
TOOL_NAME = "bench_echo"
TOOL_ARGUMENTS = json.dumps({"text": "ping"})

_ids = itertools.count(1)


class Peer:
    def __init__(self) -> None:
        # (arrival ns, latency ms) of every append, and (sent ns, round trip ms) of every tool call.
        self.up: list[tuple[int, float]] = []
        self.tools: list[tuple[int, float]] = []
        self.calls: dict[str, int] = {}
        self.open = 0
        self.connections = 0
        self.protocol_errors = 0

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        if path.startswith("/_stats"):
            await self.stats(ws)
            return
        self.open += 1
        self.connections += 1
        sender = asyncio.create_task(self.speak(ws))
        try:
            await ws.send(
                dumps(
                    {
                        "type": "session.created",
                        "event_id": "evt_0",
                        "session": {"type": "realtime", "id": f"sess_{next(_ids)}"},
                    }
                )
            )
            await self.listen(ws)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            self.open -= 1

    async def listen(self, ws: ServerConnection) -> None:
        up, calls, tools = self.up, self.calls, self.tools
        async for message in ws:
            now = time.monotonic_ns()
            if isinstance(message, str) and message.startswith(APPEND_HEAD):
                # The common case without a JSON parse: the load generator's CPU is the
                # limit at the highest counts. Any other spelling takes the parse below.
                stamp = read_stamp_b64(message[len(APPEND_HEAD) :])
                if stamp is not None:
                    up.append((now, (now - stamp[2]) / 1e6))
                    continue
            try:
                event = json.loads(message)
                kind = event["type"]
            except (ValueError, KeyError, TypeError):
                self.protocol_errors += 1
                continue
            if kind == "input_audio_buffer.append":
                stamp = read_stamp_b64(event.get("audio", ""))
                if stamp is None:
                    self.protocol_errors += 1
                else:
                    up.append((now, (now - stamp[2]) / 1e6))
            elif kind == "conversation.item.create":
                item = event.get("item") or {}
                if item.get("type") == "function_call_output":
                    sent = calls.pop(str(item.get("call_id")), None)
                    if sent is None:
                        self.protocol_errors += 1
                    else:
                        tools.append((now, (now - sent) / 1e6))
            elif kind == "session.update":
                await ws.send(
                    dumps(
                        {
                            "type": "session.updated",
                            "event_id": "evt_1",
                            "session": event.get("session", {}),
                        }
                    )
                )

    async def speak(self, ws: ServerConnection) -> None:
        """Responses back to back, one frame every 20 ms from a random phase."""
        period = FRAME_MS / 1000
        loop = asyncio.get_running_loop()
        start = loop.time() + random.random() * period
        tick = 0
        conversation = next(_ids) & 0xFFFF
        try:
            for number in itertools.count(1):
                response_id, item_id = (
                    f"resp_{conversation}_{number}",
                    f"item_{conversation}_{number}",
                )
                head = (
                    '{"type":"response.output_audio.delta","event_id":"e","response_id":"'
                    f'{response_id}","item_id":"{item_id}","output_index":0,"content_index":0,'
                    '"delta":"'
                )
                await asyncio.sleep(max(0.0, start + tick * period - loop.time()))
                await ws.send(
                    dumps(
                        {
                            "type": "response.created",
                            "event_id": "e",
                            "response": {
                                "id": response_id,
                                "object": "realtime.response",
                                "status": "in_progress",
                                "output": [],
                            },
                        }
                    )
                )
                if number % TOOL_EVERY == 0:
                    call_id = f"call_{conversation}_{number}"
                    self.calls[call_id] = time.monotonic_ns()
                    await ws.send(
                        dumps(
                            {
                                "type": "response.function_call_arguments.done",
                                "event_id": "e",
                                "response_id": response_id,
                                "item_id": item_id,
                                "output_index": 0,
                                "call_id": call_id,
                                "name": TOOL_NAME,
                                "arguments": TOOL_ARGUMENTS,
                            }
                        )
                    )
                    await ws.send(
                        dumps(
                            {
                                "type": "response.done",
                                "event_id": "e",
                                "response": {
                                    "id": response_id,
                                    "status": "completed",
                                    "output": [
                                        {
                                            "type": "function_call",
                                            "id": item_id,
                                            "call_id": call_id,
                                            "name": TOOL_NAME,
                                            "arguments": TOOL_ARGUMENTS,
                                        }
                                    ],
                                },
                            }
                        )
                    )
                    continue
                for sequence in range(FRAMES_PER_S):
                    await asyncio.sleep(max(0.0, start + tick * period - loop.time()))
                    tick += 1
                    await ws.send(head + frame_b64(conversation, sequence) + '"}')
                await ws.send(
                    dumps(
                        {
                            "type": "response.output_audio.done",
                            "event_id": "e",
                            "response_id": response_id,
                            "item_id": item_id,
                            "output_index": 0,
                            "content_index": 0,
                        }
                    )
                )
                await ws.send(
                    dumps(
                        {
                            "type": "response.done",
                            "event_id": "e",
                            "response": {"id": response_id, "status": "completed", "output": []},
                        }
                    )
                )
        except ConnectionClosed:
            pass

    async def stats(self, ws: ServerConnection) -> None:
        window: dict[str, Any] = json.loads(await ws.recv())
        begin, end = int(window["from"]), int(window["to"])
        up = [ms for at, ms in self.up if begin <= at < end]
        tools = [ms for at, ms in self.tools if begin <= at < end]
        self.up = [sample for sample in self.up if sample[0] >= end]
        self.tools = [sample for sample in self.tools if sample[0] >= end]
        await ws.send(
            dumps(
                {
                    "up": percentiles(up),
                    "tool": percentiles(tools),
                    "open": self.open,
                    "connections": self.connections,
                    "protocol_errors": self.protocol_errors,
                    "calls_unanswered": len(self.calls),
                }
            )
        )


async def serve_forever(port: int) -> None:
    peer = Peer()
    async with serve(peer.handler, "127.0.0.1", port, max_size=None, compression=None):
        print(f"peer listening on {port}", flush=True)
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run(serve_forever(args.port))


if __name__ == "__main__":
    main()
