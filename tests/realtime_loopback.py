"""A minimal loopback OpenAI Realtime socket for the consumer's tests.

A real WebSocket server (the ``websockets`` package) on its own thread and
loop: it records every client event, answers the first audio it receives
with one spoken response (when ``reply_audio`` is set), sends events a test
pushes, and closes or drops its connections on demand. It counts the
connections still open, so a test can see that nothing is left running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve


class LoopbackRealtime:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.paths: list[str] = []
        self.open = 0
        self.connections = 0
        # PCM the first response speaks when the first audio arrives; None: silent.
        self.reply_audio: bytes | None = None
        self._replied = False
        # Cleared while stalled: the handler reads nothing, so websockets stops reading too.
        self._reading = asyncio.Event()
        self._reading.set()
        self._conns: set[ServerConnection] = set()
        self._loop = asyncio.new_event_loop()
        self._server: Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def start(self) -> LoopbackRealtime:
        self._thread.start()

        async def listen() -> Server:
            return await serve(self._handler, "127.0.0.1", 0)

        self._server = self._call(listen())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event.get("type") == kind]

    # What a test makes OpenAI do.

    def push(self, event: dict[str, Any]) -> None:
        async def send() -> None:
            for conn in list(self._conns):
                await conn.send(json.dumps(event))

        self._call(send())

    def close_all(self, code: int = 1000, reason: str = "") -> None:
        async def close() -> None:
            for conn in list(self._conns):
                await conn.close(code, reason)

        self._call(close())

    def drop_all(self) -> None:
        """An abrupt end: the TCP connection goes without a close frame."""

        async def drop() -> None:
            for conn in list(self._conns):
                conn.transport.abort()

        self._call(drop())

    def stall(self) -> None:
        """OpenAI stops reading (a congested or hung peer): the engine's sends back up once
        the kernel's buffers are full, which a small receive buffer makes quick."""

        async def pause() -> None:
            self._reading.clear()
            for conn in list(self._conns):
                sock = conn.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                conn.transport.pause_reading()

        self._call(pause())

    def resume(self) -> None:
        async def resume() -> None:
            self._reading.set()
            for conn in list(self._conns):
                sock = conn.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                conn.transport.resume_reading()

        self._call(resume())

    # The server.

    async def _handler(self, conn: ServerConnection) -> None:
        self.open += 1
        self.connections += 1
        self._conns.add(conn)
        request = conn.request
        if request is not None:
            self.paths.append(request.path)
            self.authorizations.append(request.headers.get("Authorization", ""))
        try:
            await conn.send(json.dumps({"type": "session.created", "session": {}}))
            while True:
                await self._reading.wait()
                raw = await conn.recv()
                event = json.loads(raw)
                self.events.append(event)
                if event.get("type") == "input_audio_buffer.append":
                    await self._maybe_reply(conn)
        except Exception:
            pass
        finally:
            self._conns.discard(conn)
            self.open -= 1

    async def _maybe_reply(self, conn: ServerConnection) -> None:
        if self.reply_audio is None or self._replied:
            return
        self._replied = True
        delta = base64.b64encode(self.reply_audio).decode("ascii")
        for event in (
            {"type": "response.created", "response": {"id": "resp_1"}},
            {
                "type": "response.output_audio.delta",
                "response_id": "resp_1",
                "item_id": "item_1",
                "delta": delta,
            },
            {"type": "response.output_audio.done", "response_id": "resp_1", "item_id": "item_1"},
            {"type": "response.done", "response": {"id": "resp_1"}},
        ):
            await conn.send(json.dumps(event))
