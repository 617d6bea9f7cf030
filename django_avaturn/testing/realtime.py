"""`FakeRealtime`: a loopback OpenAI Realtime (GA) WebSocket server that plays a script.

Point the ``openai`` SDK at it with ``websocket_base_url=fake.websocket_base_url``
and the fake's key: the SDK connects to ``<base>/realtime?model=...`` with an
``Authorization: Bearer`` header, which the fake checks. Every connection runs
the script from its first step; the fake records what each client sent.

Needs the ``websockets`` package (``pip install 'django-avaturn[engine]'``
brings it with ``openai[realtime]``). For tests and local demos only: never
serve it beyond loopback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import math
import secrets
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .fake import DEFAULT_OPENAI_API_KEY, is_loopback_host

SAMPLE_RATE = 24000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono
DEMO_TOOL_NAME = "demo_user_info"
TONE_HZ = 220.0


def pcm_tone(duration_ms: int, *, start_ms: int = 0, hz: float = TONE_HZ) -> bytes:
    """Deterministic PCM16LE mono 24 kHz: a sine of `hz`, from `start_ms` into the tone."""
    first = start_ms * SAMPLE_RATE // 1000
    count = duration_ms * SAMPLE_RATE // 1000
    step = 2 * math.pi * hz / SAMPLE_RATE
    samples = array("h", (int(8000 * math.sin(step * n)) for n in range(first, first + count)))
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts only
        samples.byteswap()
    return samples.tobytes()


# -- the script ---------------------------------------------------------------------


@dataclass(frozen=True)
class Speak:
    """A spoken turn: once `after_audio_ms` of the visitor's audio has arrived since the
    previous step, the visitor's speech is detected and transcribed as `heard`, and a
    response speaks `say` as `audio_ms` of audio in `chunk_ms` deltas."""

    say: str
    heard: str = "Hello?"
    after_audio_ms: int = 200
    audio_ms: int = 600
    chunk_ms: int = 100


@dataclass(frozen=True)
class CallTool:
    """A tool call: after `after_audio_ms` of audio (heard as `heard`), a response calls
    `name` with `arguments` (a JSON string) and is done. The fake then waits for the
    ``function_call_output`` item for `call_id` and a ``response.create``, and speaks
    `say` formatted with ``{output}`` (the output the client sent)."""

    name: str
    arguments: str = "{}"
    call_id: str | None = None
    heard: str = "Can you look that up?"
    say: str = "Here is what I found: {output}"
    after_audio_ms: int = 200
    audio_ms: int = 600
    chunk_ms: int = 100
    output_within: float = 30.0


@dataclass(frozen=True)
class BargeIn:
    """A turn (the visitor's `asked`) whose response speaking `say` is interrupted:
    after `interrupt_after_ms` of its audio has been sent, the visitor starts speaking
    (``speech_started``). `late_audio_ms` more audio follows (what a client must drop),
    then the fake waits up to
    `cancel_within` seconds for ``response.cancel`` (the response ends ``cancelled``)
    before sending the rest. The visitor's interjection is transcribed as `heard`."""

    say: str = "Let me tell you all about it, it is a long story"
    asked: str = "Tell me a story."
    heard: str = "Wait, stop."
    after_audio_ms: int = 200
    audio_ms: int = 2000
    interrupt_after_ms: int = 500
    late_audio_ms: int = 100
    chunk_ms: int = 100
    cancel_within: float = 2.0


@dataclass(frozen=True)
class AdvisoryError:
    """An ``error`` event that does not end the session, sent once `after_audio_ms` of
    the visitor's audio has arrived since the previous step."""

    message: str = "The server had an error while processing your request."
    code: str | None = "server_error"
    type: str = "server_error"
    after_audio_ms: int = 0


@dataclass(frozen=True)
class Close:
    """The server goes away: with `code` None, the TCP connection is dropped without a
    close frame; otherwise a close frame with `code` (1011: internal error)."""

    code: int | None = None
    reason: str = ""
    after_audio_ms: int = 0


Step = Speak | CallTool | BargeIn | AdvisoryError | Close


@dataclass(frozen=True)
class Script:
    """The steps every connection plays in order; then `repeat` (if any) forever."""

    steps: Sequence[Step] = ()
    repeat: Sequence[Step] = ()

    def __iter__(self) -> Any:
        return itertools.chain(self.steps, itertools.cycle(self.repeat) if self.repeat else ())


def rundemo_script(tool_name: str = DEMO_TOOL_NAME, *, after_audio_ms: int = 3000) -> Script:
    """A script for demos: greets, calls `tool_name` once, then answers every
    `after_audio_ms` of the visitor's audio, forever."""
    return Script(
        steps=(
            Speak(
                "Hello! I am a fake avatar running offline.",
                heard="Hi there.",
                after_audio_ms=after_audio_ms,
                audio_ms=1500,
            ),
            CallTool(
                tool_name,
                heard="Who am I?",
                say="You are: {output}",
                after_audio_ms=after_audio_ms,
                audio_ms=2000,
            ),
        ),
        repeat=(
            Speak(
                "I hear you. This is a scripted answer.",
                heard="(the visitor spoke)",
                after_audio_ms=after_audio_ms,
                audio_ms=1500,
            ),
        ),
    )


# -- records ------------------------------------------------------------------------


@dataclass
class RealtimeConnection:
    """One client connection the fake accepted, and everything it sent."""

    path: str
    model: str | None
    headers: Mapping[str, str]
    """Header names lower-cased."""
    opened_at: float
    events: list[dict[str, Any]] = field(default_factory=list)
    """Client events received, in order, except ``input_audio_buffer.append``."""
    append_count: int = 0
    audio_bytes_appended: int = 0
    session_updates: list[dict[str, Any]] = field(default_factory=list)
    truncates: list[dict[str, Any]] = field(default_factory=list)
    function_call_outputs: list[dict[str, Any]] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    """Types of the server events sent, in order (audio deltas included)."""
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    closed_at: float | None = None
    close_code: int | None = None
    closed_by: str | None = None
    """"client" (the client closed), "server" (a Close step or stop()), "abort" (dropped)."""

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def event_types(self) -> list[str]:
        return [str(event.get("type")) for event in self.events]


_OPENAI_ERROR_FIELDS = ("type", "code", "message", "param", "event_id")


class _Session:
    """The state of one connection: its own asyncio task plays the script."""

    def __init__(self, fake: FakeRealtime, ws: ServerConnection, record: RealtimeConnection):
        self.fake = fake
        self.ws = ws
        self.record = record
        self.changed = asyncio.Event()
        self.audio_ms_total = 0.0
        self.audio_ms_mark = 0.0
        self.active_response: str | None = None
        self.cancel_requested = False
        self.pending_creates = 0
        self.awaiting_output: str | None = None
        self.generated_ms: dict[str, int] = {}  # assistant item id -> audio ms generated
        self.session: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_fake_{secrets.token_hex(8)}",
            "model": record.model or "",
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "turn_detection": {"type": "server_vad"},
                },
                "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "voice": "marin"},
            },
        }
        self.free_responses: set[asyncio.Task[None]] = set()

    # -- sending ----------------------------------------------------------------

    async def send(self, event_type: str, **fields: Any) -> None:
        event = {"type": event_type, "event_id": _id("event"), **fields}
        with self.fake._lock:
            self.record.sent.append(event_type)
            if event_type == "error":
                self.record.errors_sent.append(event["error"])
        await self.ws.send(json.dumps(event))

    async def error(
        self,
        message: str,
        *,
        code: str | None,
        type: str = "invalid_request_error",
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """OpenAI's ``error`` event; ``event_id`` names the client event it refuses."""
        error = {
            "type": type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        }
        await self.send("error", error=error)

    # -- receiving --------------------------------------------------------------

    async def read(self) -> None:
        async for message in self.ws:
            try:
                event = json.loads(message)
            except ValueError:
                await self.error("Invalid JSON in the client event.", code="invalid_json")
                continue
            if not isinstance(event, dict):
                await self.error("The client event must be a JSON object.", code="invalid_json")
                continue
            await self.handle(event)
            self.changed.set()

    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        lock = self.fake._lock
        if kind == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(event.get("audio", ""), validate=True)
            except (binascii.Error, TypeError):
                await self.error("Invalid base64 audio.", code="invalid_value", param="audio")
                return
            with lock:
                self.record.append_count += 1
                self.record.audio_bytes_appended += len(audio)
            self.audio_ms_total += len(audio) / BYTES_PER_MS
            return
        with lock:
            self.record.events.append(event)
        if kind == "session.update":
            update = event.get("session")
            refusal = self.fake.refuse_session
            if refusal is not None:
                # As OpenAI refuses an unknown voice or a malformed tool: the session
                # keeps what it had, and the error names the client event.
                await self.error(
                    refusal,
                    code="invalid_value",
                    param="session",
                    event_id=event.get("event_id")
                    if isinstance(event.get("event_id"), str)
                    else None,
                )
                return
            if isinstance(update, dict):
                with lock:
                    self.record.session_updates.append(update)
                self.session.update({k: v for k, v in update.items() if k != "type"})
            await self.send("session.updated", session=self.session)
        elif kind == "conversation.item.create":
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                with lock:
                    self.record.function_call_outputs.append(item)
            item_id = item.get("id") if isinstance(item, dict) else None
            await self.send(
                "conversation.item.added",
                previous_item_id=None,
                item={**(item if isinstance(item, dict) else {}), "id": item_id or _id("item")},
            )
        elif kind == "conversation.item.truncate":
            await self.truncate(event)
        elif kind == "response.cancel":
            if self.active_response is None:
                await self.error(
                    "Cancellation failed: no active response found",
                    code="response_cancel_not_active",
                )
            else:
                self.cancel_requested = True
        elif kind == "response.create":
            if self.active_response is not None:
                await self.error(
                    "Conversation already has an active response in progress: "
                    f"{self.active_response}. Wait until the response is finished "
                    "before creating a new one.",
                    code="conversation_already_has_active_response",
                )
            elif self.awaiting_output is not None and self.output_arrived():
                self.pending_creates += 1
            else:
                response = event.get("response")
                text = response.get("instructions") if isinstance(response, dict) else None
                # Active from now: a second response.create meanwhile is refused.
                self.active_response = _id("resp")
                task = asyncio.ensure_future(
                    self.respond(str(text or "Okay."), 400, 100, self.active_response)
                )
                self.free_responses.add(task)
                task.add_done_callback(self.free_responses.discard)

    async def truncate(self, event: dict[str, Any]) -> None:
        with self.fake._lock:
            self.record.truncates.append(event)
        item_id = event.get("item_id")
        end_ms = event.get("audio_end_ms")
        if not isinstance(item_id, str) or item_id not in self.generated_ms:
            await self.error(
                f"Item with item_id not found: {item_id}", code="item_not_found", param="item_id"
            )
            return
        generated = self.generated_ms[item_id]
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            await self.error("Invalid audio_end_ms.", code="invalid_value", param="audio_end_ms")
            return
        if end_ms > generated:
            # What OpenAI answers for a truncation past the audio it generated.
            await self.error(
                f"Audio content of {generated}ms is already shorter than {end_ms}ms",
                code="invalid_value",
                param="audio_end_ms",
            )
            return
        self.generated_ms[item_id] = end_ms
        await self.send(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=event.get("content_index", 0),
            audio_end_ms=end_ms,
        )

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        async def until() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- the script -------------------------------------------------------------

    async def play(self, script: Iterable[Step]) -> None:
        await self.send("session.created", session=self.session)
        for step in script:
            await self.wait_for(partial(self.heard_enough, step.after_audio_ms))
            await self.wait_for(lambda: self.active_response is None)
            if isinstance(step, Close):
                await self.close(step)
                return
            if isinstance(step, AdvisoryError):
                await self.error(step.message, code=step.code, type=step.type)
            elif isinstance(step, Speak):
                await self.user_turn(step.heard)
                await self.respond(step.say, step.audio_ms, step.chunk_ms)
            elif isinstance(step, CallTool):
                await self.user_turn(step.heard)
                await self.call_tool(step)
            else:
                await self.user_turn(step.asked)
                await self.barge_in(step)
            self.audio_ms_mark = self.audio_ms_total

    def heard_enough(self, ms: int) -> bool:
        """Whether `ms` of the visitor's audio arrived since the previous step."""
        return self.audio_ms_total - self.audio_ms_mark >= ms

    async def close(self, step: Close) -> None:
        with self.fake._lock:
            self.record.closed_by = "server" if step.code is not None else "abort"
        if step.code is None:
            self.ws.transport.abort()
        else:
            await self.ws.close(step.code, step.reason)

    async def user_turn(self, heard: str, *, started: bool = False) -> None:
        item_id = _id("item")
        at = int(self.audio_ms_total)
        if not started:
            await self.send("input_audio_buffer.speech_started", audio_start_ms=at, item_id=item_id)
        await self.send("input_audio_buffer.speech_stopped", audio_end_ms=at, item_id=item_id)
        await self.send("input_audio_buffer.committed", previous_item_id=None, item_id=item_id)
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=heard,
        )

    async def start_response(self, response_id: str | None = None) -> tuple[str, str]:
        response_id, item_id = response_id or _id("resp"), _id("item")
        self.active_response = response_id
        self.cancel_requested = False
        await self.send(
            "response.created",
            response={
                "id": response_id,
                "object": "realtime.response",
                "status": "in_progress",
                "output": [],
            },
        )
        return response_id, item_id

    async def end_response(self, response_id: str, status: str, output: list[Any]) -> None:
        await self.send(
            "response.done",
            response={
                "id": response_id,
                "object": "realtime.response",
                "status": status,
                "output": output,
            },
        )
        self.active_response = None
        self.changed.set()

    async def audio(
        self,
        response_id: str,
        item_id: str,
        start_ms: int,
        ms: int,
        chunk_ms: int,
        *,
        in_flight: bool = False,
    ) -> int:
        """Send `ms` of audio from `start_ms`; stops early on cancel unless the audio
        is `in_flight` (already on its way). Returns the ms sent."""
        sent = 0
        while sent < ms and (in_flight or not self.cancel_requested):
            size = min(chunk_ms, ms - sent)
            delta = base64.b64encode(pcm_tone(size, start_ms=start_ms + sent)).decode()
            await self.send(
                "response.output_audio.delta",
                response_id=response_id,
                item_id=item_id,
                output_index=0,
                content_index=0,
                delta=delta,
            )
            sent += size
            self.generated_ms[item_id] = start_ms + sent
            await asyncio.sleep(0)
        return sent

    async def finish_audio(self, response_id: str, item_id: str, text: str, status: str) -> None:
        where = {
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
        }
        await self.send("response.output_audio.done", **where)
        await self.send("response.output_audio_transcript.done", **where, transcript=text)
        item = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [{"type": "output_audio", "transcript": text}],
        }
        await self.end_response(response_id, status, [item])

    async def respond(
        self, text: str, audio_ms: int, chunk_ms: int, response_id: str | None = None
    ) -> None:
        response_id, item_id = await self.start_response(response_id)
        await self.output_item(response_id, item_id)
        await self.audio(response_id, item_id, 0, audio_ms, chunk_ms)
        status = "cancelled" if self.cancel_requested else "completed"
        await self.finish_audio(response_id, item_id, text, status)

    async def output_item(self, response_id: str, item_id: str) -> None:
        item = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=item
        )

    async def call_tool(self, step: CallTool) -> None:
        call_id = step.call_id or _id("call")
        response_id, item_id = await self.start_response()
        self.awaiting_output = call_id
        await self.send(
            "response.function_call_arguments.done",
            response_id=response_id,
            item_id=item_id,
            output_index=0,
            call_id=call_id,
            name=step.name,
            arguments=step.arguments,
        )
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "completed",
            "call_id": call_id,
            "name": step.name,
            "arguments": step.arguments,
        }
        await self.end_response(response_id, "completed", [item])

        arrived = await self.wait_for(lambda: self.pending_creates > 0, step.output_within)
        found = self.output_arrived() or {}
        self.awaiting_output = None
        self.pending_creates = 0
        if not arrived:
            return
        await self.respond(
            step.say.format(output=found.get("output", "")), step.audio_ms, step.chunk_ms
        )

    def output_arrived(self) -> dict[str, Any] | None:
        """The function_call_output item for the call the script awaits, if it came."""
        for given in self.record.function_call_outputs:
            if given.get("call_id") == self.awaiting_output:
                return given
        return None

    async def barge_in(self, step: BargeIn) -> None:
        response_id, item_id = await self.start_response()
        await self.output_item(response_id, item_id)
        sent = await self.audio(response_id, item_id, 0, step.interrupt_after_ms, step.chunk_ms)
        await self.send(
            "input_audio_buffer.speech_started",
            audio_start_ms=int(self.audio_ms_total),
            item_id=_id("item"),
        )
        sent += await self.audio(
            response_id, item_id, sent, step.late_audio_ms, step.chunk_ms, in_flight=True
        )
        await self.wait_for(lambda: self.cancel_requested, step.cancel_within)
        await self.audio(response_id, item_id, sent, step.audio_ms - sent, step.chunk_ms)
        status = "cancelled" if self.cancel_requested else "completed"
        await self.finish_audio(response_id, item_id, step.say, status)
        await self.user_turn(step.heard, started=True)


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class FakeRealtime:
    """An OpenAI Realtime WebSocket server on ``ws://127.0.0.1:<port>``.

    Use it as a context manager, or call `start()` and `stop()`::

        with FakeRealtime(script=Script([Speak("Hello!")])) as fake:
            client = AsyncOpenAI(api_key=fake.api_key,
                                 websocket_base_url=fake.websocket_base_url)
            ...
            assert fake.open_connections == 0
    """

    def __init__(
        self,
        script: Script | Sequence[Step] | None = None,
        *,
        api_key: str = DEFAULT_OPENAI_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"refusing to serve the fake Realtime API on non-loopback {host!r}")
        if script is None:
            script = rundemo_script()
        self.script = script if isinstance(script, Script) else Script(tuple(script))
        self.api_key = api_key
        # A message: every session.update is refused with it (an invalid_request_error
        # naming the event), as OpenAI refuses a configuration it does not accept.
        self.refuse_session: str | None = None
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._connections: list[RealtimeConnection] = []
        self._refused: list[Mapping[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> FakeRealtime:
        if self._thread is not None:
            raise RuntimeError("the fake Realtime server is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(self._serve())
                self.port = next(iter(self._server.sockets)).getsockname()[1]
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="FakeRealtime", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    async def _serve(self) -> Server:
        return await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._check_request,
            max_size=None,
            compression=None,
        )

    def stop(self) -> None:
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None:
            return

        self._stopping = True

        async def shut() -> None:
            if server is not None:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = self._server = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> FakeRealtime:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeRealtime {self.websocket_base_url if self.running else 'stopped'}>"

    # -- addresses --------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.running:
            raise RuntimeError("start the fake Realtime server first: its port is chosen on bind")
        return f"ws://{self.host}:{self.port}"

    @property
    def websocket_base_url(self) -> str:
        """The ``openai`` SDK's ``websocket_base_url``: it connects to ``<this>/realtime``."""
        return f"{self.url}/v1"

    @property
    def realtime_url(self) -> str:
        """The URL the SDK opens, before its ``?model=`` query."""
        return f"{self.websocket_base_url}/realtime"

    # -- inspection -------------------------------------------------------------

    @property
    def connections(self) -> list[RealtimeConnection]:
        """Every connection accepted since start (or the last reset), oldest first."""
        with self._lock:
            return list(self._connections)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for record in self._connections if record.open)

    @property
    def refused(self) -> list[Mapping[str, str]]:
        """The headers of upgrades refused (a wrong key or path)."""
        with self._lock:
            return list(self._refused)

    def reset(self) -> None:
        """Forget closed connections and refusals (open ones stay recorded)."""
        with self._lock:
            self._connections = [record for record in self._connections if record.open]
            self._refused.clear()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` from a test's thread until true or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # -- serving (on the fake's own loop) -----------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if not path.rstrip("/").endswith("/realtime"):
            return self._refuse(connection, request.headers, 404, "Not found (fake Realtime).")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._refuse(connection, request.headers, 401, "Incorrect API key provided.")
        return None

    def _refuse(
        self, connection: ServerConnection, headers: Headers, status: int, message: str
    ) -> Response:
        with self._lock:
            self._refused.append({k.lower(): v for k, v in headers.raw_items()})
        body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
        response = connection.respond(status, json.dumps(body))
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # set once the handshake succeeded
        models = parse_qs(urlsplit(request.path).query).get("model")
        record = RealtimeConnection(
            path=request.path,
            model=models[0] if models else None,
            headers={k.lower(): v for k, v in request.headers.raw_items()},
            opened_at=time.time(),
        )
        with self._lock:
            self._connections.append(record)
        session = _Session(self, ws, record)
        player = asyncio.ensure_future(session.play(iter(self.script)))
        try:
            await session.read()
        except ConnectionClosed:
            pass
        finally:
            player.cancel()
            for task in list(session.free_responses):
                task.cancel()
            await asyncio.gather(player, *session.free_responses, return_exceptions=True)
            with self._lock:
                record.closed_at = time.time()
                received = ws.protocol.close_rcvd
                record.close_code = received.code if received is not None else None
                if record.closed_by is None:
                    if self._stopping:
                        record.closed_by = "server"
                    else:
                        record.closed_by = "client" if received is not None else "abort"
