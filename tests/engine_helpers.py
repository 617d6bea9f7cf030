"""In-memory stand-ins for the bridge's two sockets, and OpenAI Realtime events.

``MemoryAvaturn`` and ``MemoryRealtime`` implement the bridge's ``AvaturnSocket`` and
``RealtimeSocket`` protocols (the bridge is built to take them injected); the
loopback servers that stand in for the real upstreams live elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from django_avaturn.engine.bridge import Bridge


class MemoryAvaturn:
    """Avaturn's socket: records what the engine sent, text and binary, in order."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    async def send_text(self, text: str) -> None:
        self.sent.append(text)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.sent if isinstance(item, str)]

    def types(self) -> list[str]:
        return [message["type"] for message in self.messages()]

    def audio(self) -> bytes:
        return b"".join(item for item in self.sent if isinstance(item, bytes))


class MemoryRealtime:
    """OpenAI's socket: events are pushed to the bridge one at a time.

    ``push`` returns once the bridge has handled the event and is waiting for the next
    one, so a test sees the bridge's full reaction to each event.
    """

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._waiting = asyncio.Event()
        self.sent: list[str] = []
        self.closed = False

    async def send_raw(self, data: bytes | str) -> None:
        if self.closed:
            raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
        self.sent.append(data.decode() if isinstance(data, bytes) else data)

    async def recv_bytes(self) -> bytes:
        self._waiting.set()
        item = await self._incoming.get()
        self._waiting.clear()
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self, *, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    async def push(self, event: dict[str, Any] | bytes) -> None:
        raw = event if isinstance(event, bytes) else json.dumps(event).encode()
        self._waiting.clear()
        await self._incoming.put(raw)
        await self.wait_idle()

    async def push_last(self, event: dict[str, Any]) -> None:
        """``push`` an event after which the bridge reads no more (it ends on it)."""
        await self._incoming.put(json.dumps(event).encode())

    async def wait_idle(self) -> None:
        await asyncio.wait_for(self._waiting.wait(), 2)
        # Let tasks the event started (tool calls, notices) take their first step.
        for _ in range(3):
            await asyncio.sleep(0)

    async def close_from_server(self, code: int = 1000, reason: str = "") -> None:
        frame = Close(code, reason)
        if code in (1000, 1001):
            exc: BaseException = ConnectionClosedOK(frame, frame, True)
        else:
            exc = ConnectionClosedError(frame, frame, True)
        await self._incoming.put(exc)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.sent]

    def types(self) -> list[str]:
        return [event["type"] for event in self.events()]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events() if event["type"] == kind]


def pcm(milliseconds: int, fill: int = 1) -> bytes:
    """PCM16 24 kHz audio of this length (48 bytes a millisecond)."""
    return bytes([fill]) * (48 * milliseconds)


def audio_delta(response_id: str, item_id: str, audio: bytes) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "event_id": "ev",
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(audio).decode(),
    }


def response_created(response_id: str) -> dict[str, Any]:
    return {"type": "response.created", "response": {"id": response_id, "status": "in_progress"}}


def response_done(response_id: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": response_id, "status": status}}


def audio_done(response_id: str, item_id: str) -> dict[str, Any]:
    return {
        "type": "response.output_audio.done",
        "response_id": response_id,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
    }


def openai_error(code: str, message: str = "", **fields: Any) -> dict[str, Any]:
    """OpenAI's ``error`` event; ``fields`` (``event_id``, ``param``, ``type``) join it."""
    error: dict[str, Any] = {"code": code, **fields}
    if message:
        error["message"] = message
    return {"type": "error", "error": error}


SPEECH_STARTED: dict[str, Any] = {
    "type": "input_audio_buffer.speech_started",
    "audio_start_ms": 0,
    "item_id": "user-item",
}


def function_call(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {
        "type": "response.function_call_arguments.done",
        "response_id": "r-call",
        "item_id": "i-call",
        "output_index": 0,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def avaturn(kind: str, **fields: Any) -> str:
    return json.dumps({"type": f"avatar.speech.segment.{kind}", **fields})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Running:
    """A bridge running on the current loop, with its in-memory sockets."""

    def __init__(self, **kwargs: Any) -> None:
        self.avaturn = MemoryAvaturn()
        self.realtime = MemoryRealtime()
        self.clock = FakeClock()
        self.bridge = Bridge(self.avaturn, self.realtime, clock=self.clock, **kwargs)
        self.task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.get_running_loop().create_task(self.bridge.run())
        await self.realtime.wait_idle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        if not self.task.done():
            await self.bridge.stop()
            await asyncio.wait_for(self.task, 2)

    async def speak(self, response_id: str, item_id: str, *chunks: bytes) -> None:
        for chunk in chunks:
            await self.realtime.push(audio_delta(response_id, item_id, chunk))


class SegmentChecker:
    """Reads what Avaturn received, in order, and holds it to the segment rules."""

    def __init__(self) -> None:
        self.open: str | None = None
        self.opened: list[str] = []
        self.problems: list[str] = []

    def check(self, sent: list[str | bytes]) -> list[str]:
        for index, item in enumerate(sent):
            if isinstance(item, bytes):
                if self.open is None:
                    self.problems.append(f"#{index}: audio outside a segment")
                continue
            message = json.loads(item)
            kind = message["type"]
            if kind == "avatar.speech.segment.create":
                if self.open is not None:
                    self.problems.append(f"#{index}: a second segment opened")
                if message["segment_uid"] in self.opened:
                    self.problems.append(f"#{index}: a segment uid reused")
                self.open = message["segment_uid"]
                self.opened.append(self.open)
            elif kind == "avatar.speech.segment.close":
                if message["segment_uid"] != self.open:
                    self.problems.append(f"#{index}: closing a segment that is not open")
                self.open = None
            elif kind == "avatar.speech.interrupt" and self.open is not None:
                self.problems.append(f"#{index}: interrupt with a segment open")
        return self.problems
