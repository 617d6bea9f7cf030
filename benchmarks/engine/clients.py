"""Avaturn's side of N conversations, timed: ``python -m benchmarks.engine.clients``.

Reads one JSON line on stdin, ``{"conversations": [{"url", "headers"}, ...]}``,
and connects each as Avaturn's external engine client would (the URL and the
headers it was given). Each streams 20 ms frames of PCM16 24 kHz (``frames``)
at 50 per second from a random phase, acknowledges segments
(``avatar.speech.segment.created`` / ``.closed``), and times every binary frame
that comes down from the stamp in it. Once every connection was tried it prints
``{"connected", "failed"}``; then it reads ``{"from": ns, "to": ns}``, streams
until ``to``, closes every socket and prints what it measured in the window:
the down latencies, frames sent and received, segments, and any breach of the
protocol (audio outside a segment, a segment opened over another) or socket the
server closed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.engine.frames import FRAME_MS, dumps, frame, percentiles, read_stamp, run

CONNECT_CONCURRENCY = 10


class Conversation:
    def __init__(self, number: int, url: str, headers: dict[str, str], stats: Stats) -> None:
        self.number = number
        self.url = url
        self.headers = headers
        self.stats = stats
        self.ws: ClientConnection | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.segment: str | None = None
        self.closing = False

    async def open(self) -> None:
        self.ws = await connect(
            self.url,
            additional_headers=self.headers,
            max_size=None,
            compression=None,
            open_timeout=60,
        )
        self.tasks = [asyncio.create_task(self.talk()), asyncio.create_task(self.listen())]

    async def talk(self) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        period = FRAME_MS / 1000
        start = loop.time() + random.random() * period
        stats = self.stats
        sequence = 0
        try:
            while True:
                await asyncio.sleep(max(0.0, start + sequence * period - loop.time()))
                await self.ws.send(frame(self.number, sequence))
                stats.sent.append(time.monotonic_ns())
                sequence += 1
        except ConnectionClosed:
            self.lost()

    async def listen(self) -> None:
        assert self.ws is not None
        stats = self.stats
        segments = 0
        try:
            async for message in self.ws:
                now = time.monotonic_ns()
                if isinstance(message, bytes):
                    stamp = read_stamp(message)
                    if stamp is None:
                        stats.errors.append("a binary frame without a stamp")
                    else:
                        stats.down.append((now, (now - stamp[2]) / 1e6))
                    if self.segment is None:
                        stats.errors.append("audio outside a segment")
                    continue
                event = json.loads(message)
                kind = event.get("type")
                if kind == "avatar.speech.segment.create":
                    if self.segment is not None:
                        stats.errors.append("a segment opened over another")
                    self.segment = event.get("segment_uid")
                    segments += 1
                    stats.segments += 1
                    await self.ws.send(
                        dumps(
                            {
                                "type": "avatar.speech.segment.created",
                                "segment_uid": self.segment,
                                "segment_id": segments,
                            }
                        )
                    )
                elif kind == "avatar.speech.segment.close":
                    await self.ws.send(
                        dumps(
                            {
                                "type": "avatar.speech.segment.closed",
                                "segment_uid": self.segment,
                                "segment_id": segments,
                            }
                        )
                    )
                    self.segment = None
        except ConnectionClosed:
            pass
        self.lost()

    def lost(self) -> None:
        if not self.closing:
            self.closing = True
            code = self.ws.close_code if self.ws is not None else None
            self.stats.errors.append(f"the server closed conversation {self.number} ({code})")

    async def close(self) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()


class Stats:
    def __init__(self) -> None:
        self.down: list[tuple[int, float]] = []
        self.sent: list[int] = []
        self.segments = 0
        self.errors: list[str] = []


def ask() -> dict[str, Any]:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("stdin closed")
    return json.loads(line)  # type: ignore[no-any-return]


async def main() -> None:
    loop = asyncio.get_running_loop()
    spec = await loop.run_in_executor(None, ask)
    stats = Stats()
    conversations = [
        Conversation(number, item["url"], item.get("headers", {}), stats)
        for number, item in enumerate(spec["conversations"])
    ]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    failed: list[str] = []

    async def open_one(conversation: Conversation) -> None:
        async with gate:
            try:
                await conversation.open()
            except Exception as exc:
                failed.append(f"{type(exc).__name__}: {exc}"[:200])

    began = time.monotonic()
    await asyncio.gather(*(open_one(c) for c in conversations))
    print(
        dumps(
            {
                "connected": len(conversations) - len(failed),
                "failed": failed,
                "connect_s": round(time.monotonic() - began, 2),
            }
        ),
        flush=True,
    )
    window = await loop.run_in_executor(None, ask)
    begin, end = int(window["from"]), int(window["to"])
    await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
    errors = list(stats.errors)
    await asyncio.gather(*(c.close() for c in conversations), return_exceptions=True)
    print(
        dumps(
            {
                "down": percentiles([ms for at, ms in stats.down if begin <= at < end]),
                "sent": sum(1 for at in stats.sent if begin <= at < end),
                "segments": stats.segments,
                "errors": sorted(set(errors))[:20],
                "error_count": len(errors),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    run(main())
