"""`AvaturnEngineClient`: Avaturn Live's side of an ``external`` conversation engine.

Avaturn opens a WebSocket to the engine's ``url`` with its ``headers``, streams
the visitor's microphone as PCM16LE mono binary frames, and answers the engine's
speech segments. This client does the same offline: it connects, streams 20 ms
frames (silence or a deterministic tone), acknowledges segments, reports their
playback as if played in real time, answers ``avatar.speech.interrupt`` with the
played duration, collects ``sdk.message.send`` data, and records what it got,
protocol violations included.

What Avaturn promises is one page of documentation and one reference engine;
where this client has to choose, it says so ("inferred"). Needs ``websockets``.

Async tests: ``async with AvaturnEngineClient(url, headers) as client: ...``.
Sync tests: ``with AvaturnEngineClient(url, headers) as client: ...`` runs it in a
thread of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import threading
import time
from array import array
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

FRAME_MS = 20
BYTES_PER_MS = 48  # PCM16 mono at 24 kHz
MICROPHONES = ("silence", "tone")
TICK = 0.01  # seconds between playback clock updates

T = TypeVar("T")


def microphone_frame(kind: str, index: int, *, sample_rate: int = 24000) -> bytes:
    """Frame `index` (20 ms each) of the microphone: zeros, or a 440 Hz sine."""
    count = sample_rate * FRAME_MS // 1000
    if kind == "silence":
        return bytes(2 * count)
    step = 2 * math.pi * 440.0 / sample_rate
    first = index * count
    samples = array("h", (int(6000 * math.sin(step * n)) for n in range(first, first + count)))
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts only
        samples.byteswap()
    return samples.tobytes()


@dataclass
class Segment:
    """One speech segment the engine opened, as this client saw and played it."""

    segment_uid: str
    segment_id: str
    created_at: float
    bytes: int = 0
    closed_at: float | None = None
    playback_started_at: float | None = None
    playback_ended_at: float | None = None
    interrupted_at: float | None = None
    played_duration: float | None = None
    """Seconds played when interrupted."""
    bytes_after_interrupt: int = 0
    """Audio that arrived for it after it was interrupted (discarded)."""

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def audio_ms(self) -> float:
        return self.bytes / BYTES_PER_MS


@dataclass
class _Playback:
    """The segment being played: when it started and how much of it was played."""

    segment: Segment
    started: float  # monotonic
    played_ms: float = 0.0
    last: float = 0.0


@dataclass
class EngineClientState:
    """Everything the client recorded; read it through the client's properties."""

    segments: list[Segment] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    browser_messages: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    interrupts: int = 0
    audio_bytes_sent: int = 0
    audio_bytes_received: int = 0
    audio_bytes_outside_segments: int = 0


class AvaturnEngineClient:
    """Avaturn's end of the external-engine socket, connected to `url` with `headers`.

    `microphone`: "silence", "tone" or None (send no audio unless `send_audio()` is
    called). `paced`: the microphone sends a frame every 20 ms, as Avaturn streams a
    live microphone; False sends frames back to back. `playback_rate`: 1.0 plays
    received audio in real time; higher plays faster (for quick tests).
    `on_close` is called once, from the client's loop, when the socket is closed
    by either side or the connection fails. `on_browser_message` is called, from
    the client's loop, with the ``data`` of each ``sdk.message.send``: what Avaturn
    passes on to the page.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        sample_rate: int = 24000,
        microphone: str | None = "silence",
        paced: bool = True,
        playback_rate: float = 1.0,
        open_timeout: float = 10.0,
        on_close: Callable[[AvaturnEngineClient], None] | None = None,
        on_browser_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if microphone is not None and microphone not in MICROPHONES:
            raise ValueError(f"microphone must be one of {MICROPHONES} or None")
        if sample_rate not in (16000, 24000):
            raise ValueError("sample_rate must be 16000 or 24000")
        if playback_rate <= 0:
            raise ValueError("playback_rate must be positive")
        self.url = url
        self.headers = dict(headers or {})
        self.sample_rate = sample_rate
        self.microphone = microphone
        self.paced = paced
        self.playback_rate = playback_rate
        self.open_timeout = open_timeout
        self.on_close = on_close
        self.on_browser_message = on_browser_message
        self._lock = threading.Lock()
        self._state = EngineClientState()
        self._ws: ClientConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._open: Segment | None = None
        self._queue: list[Segment] = []  # closed or open segments waiting to be played
        self._playing: _Playback | None = None
        self._counter = 0
        self._closing_by_us = False
        self._close_requested = False
        self._done: asyncio.Event | None = None
        self.connected = False
        self.refused_status: int | None = None
        """The HTTP status of a refused upgrade."""
        self.connect_error: str | None = None
        self.closed = False
        self.closed_by: str | None = None
        """"client" (close() was called), "engine" (it sent a close frame), or
        "abnormal" (no close frame: the connection dropped), "failed" (never opened)."""
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # -- async API --------------------------------------------------------------

    async def aconnect(self) -> AvaturnEngineClient:
        """Open the socket and start streaming; raises if the upgrade fails."""
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        try:
            self._ws = await connect(
                self.url,
                additional_headers=self.headers,
                open_timeout=self.open_timeout,
                max_size=None,
                compression=None,
            )
        except BaseException as exc:
            if isinstance(exc, InvalidStatus):
                self.refused_status = exc.response.status_code
            self.connect_error = f"{type(exc).__name__}: {exc}"
            self._finish("failed", None, None)
            raise
        self.connected = True
        if self._close_requested:  # close() came while the upgrade was under way
            self._closing_by_us = True
            await self._ws.close(1000, "visitor gone")
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._play())]
        if self.microphone is not None:
            self._tasks.append(asyncio.ensure_future(self._stream()))
        return self

    async def aclose(self, code: int = 1000, reason: str = "visitor gone") -> None:
        """Close the socket as Avaturn does when the visitor leaves, and wait for the end."""
        self._close_requested = True
        ws = self._ws
        if ws is None:  # not connected (yet): aconnect() closes what it opens
            return
        if not self.closed:
            self._closing_by_us = True
            await ws.close(code, reason)
        await self.await_closed()

    async def await_closed(self, timeout: float | None = None) -> bool:
        """Wait until the socket is closed, by either side. False on timeout."""
        if self._done is None:
            return self.closed
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        return True

    async def asend_audio(self, duration_ms: int, *, kind: str = "tone") -> None:
        """Send `duration_ms` of microphone audio now, in 20 ms frames, unpaced."""
        for index in range(max(1, duration_ms // FRAME_MS)):
            await self._send_frame(microphone_frame(kind, index, sample_rate=self.sample_rate))

    async def asend_json(self, message: Mapping[str, Any]) -> None:
        """Send a JSON message to the engine (``sdk.message.receive`` or anything else)."""
        await self._send(dict(message))

    async def __aenter__(self) -> AvaturnEngineClient:
        return await self.aconnect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- sync API (the client runs on a loop in its own thread) ---------------------

    def start(self, *, wait: bool = True) -> AvaturnEngineClient:
        """Connect from a thread of the client's own. With `wait`, block until the
        socket is open and raise if the upgrade fails; otherwise return at once
        (a failure shows in `connect_error` and `closed_by`)."""
        if self._thread is not None:
            raise RuntimeError("the engine client is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                await self.aconnect()
            except Exception as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            await self.await_closed()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(main())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="AvaturnEngineClient", daemon=True)
        self._thread.start()
        if wait:
            ready.wait()
            if failure:
                self._thread.join()
                raise failure[0]
        return self

    def close(self, code: int = 1000, reason: str = "visitor gone", *, wait: bool = True) -> None:
        """Close from any thread (the visitor left). With `wait`, block until closed."""
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            raise RuntimeError("close() is for a client started with start(); use aclose()")
        if not self.closed and not loop.is_closed():
            try:
                future = asyncio.run_coroutine_threadsafe(self.aclose(code, reason), loop)
            except RuntimeError:  # the loop stopped meanwhile
                future = None
            if future is not None and wait:
                # An error here means the loop ended while closing: it is closed anyway.
                with contextlib.suppress(Exception):
                    future.result(timeout=10)
        if wait:
            thread.join(timeout=10)

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """Block until the socket is closed by either side (sync API). False on timeout."""
        return self.wait_until(lambda: self.closed, timeout)

    def send_audio(self, duration_ms: int, *, kind: str = "tone") -> None:
        self._call(self.asend_audio(duration_ms, kind=kind))

    def send_json(self, message: Mapping[str, Any]) -> None:
        self._call(self.asend_json(message))

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._thread is None:
            coroutine.close()
            raise RuntimeError("start() the client first (or use the async methods)")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def __enter__(self) -> AvaturnEngineClient:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` from a test's thread until true or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # -- inspection -------------------------------------------------------------

    @property
    def segments(self) -> list[Segment]:
        with self._lock:
            return list(self._state.segments)

    @property
    def received(self) -> list[dict[str, Any]]:
        """JSON messages from the engine, in order."""
        with self._lock:
            return list(self._state.received)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """JSON messages this client sent, in order."""
        with self._lock:
            return list(self._state.sent)

    @property
    def browser_messages(self) -> list[dict[str, Any]]:
        """The ``data`` of every ``sdk.message.send``: what the page would receive."""
        with self._lock:
            return list(self._state.browser_messages)

    @property
    def violations(self) -> list[str]:
        """Breaches of the protocol by the engine (audio outside a segment, ...)."""
        with self._lock:
            return list(self._state.violations)

    @property
    def interrupts(self) -> int:
        with self._lock:
            return self._state.interrupts

    @property
    def audio_bytes_sent(self) -> int:
        with self._lock:
            return self._state.audio_bytes_sent

    @property
    def audio_bytes_received(self) -> int:
        with self._lock:
            return self._state.audio_bytes_received

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary of the connection."""
        with self._lock:
            return {
                "url": self.url,
                "connected": self.connected,
                "closed": self.closed,
                "closed_by": self.closed_by,
                "close_code": self.close_code,
                "segments": len(self._state.segments),
                "audio_bytes_sent": self._state.audio_bytes_sent,
                "audio_bytes_received": self._state.audio_bytes_received,
                "browser_messages": list(self._state.browser_messages),
                "violations": list(self._state.violations),
            }

    # -- on the client's loop ---------------------------------------------------

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise RuntimeError("not connected")
        with self._lock:
            self._state.sent.append(message)
        await self._ws.send(json.dumps(message))

    async def _send_frame(self, frame: bytes) -> None:
        if self._ws is None:
            raise RuntimeError("not connected")
        await self._ws.send(frame)
        with self._lock:
            self._state.audio_bytes_sent += len(frame)

    async def _stream(self) -> None:
        assert self.microphone is not None
        start = time.monotonic()
        index = 0
        try:
            while True:
                await self._send_frame(
                    microphone_frame(self.microphone, index, sample_rate=self.sample_rate)
                )
                index += 1
                if self.paced:
                    await asyncio.sleep(
                        max(0.0, start + index * FRAME_MS / 1000 - time.monotonic())
                    )
                else:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            return

    async def _read(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self._audio(message)
                else:
                    await self._message(message)
        except ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        how = "engine" if received is not None else "abnormal"
        # Ours only if our close frame went first: close() may come after the engine's
        # arrived (the fake closes the client on a DELETE the engine's end sent).
        if self._closing_by_us and not ws.protocol.close_rcvd_then_sent:
            how = "client"
        self._finish(
            how, received.code if received else None, received.reason if received else None
        )

    def _finish(self, how: str, code: int | None, reason: str | None) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.closed_by = how
            self.close_code = code
            self.close_reason = reason
        if self._done is not None:
            self._done.set()
        if self.on_close is not None:
            self.on_close(self)

    def _violation(self, text: str) -> None:
        with self._lock:
            self._state.violations.append(text)

    def _audio(self, data: bytes) -> None:
        with self._lock:
            self._state.audio_bytes_received += len(data)
            segment = self._open
            if segment is None:
                self._state.audio_bytes_outside_segments += len(data)
            elif segment.interrupted_at is not None:
                segment.bytes_after_interrupt += len(data)
            else:
                segment.bytes += len(data)
        if segment is None:
            self._violation(f"audio outside a segment ({len(data)} bytes)")

    async def _message(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self._violation("a text frame that is not JSON")
            await self._error("json.parsing.error", "Invalid JSON")
            return
        if not isinstance(message, dict):
            self._violation("a JSON message that is not an object")
            await self._error("message.type.error", "Expected a JSON object")
            return
        with self._lock:
            self._state.received.append(message)
        kind = message.get("type")
        if kind == "avatar.speech.segment.create":
            await self._create(message)
        elif kind == "avatar.speech.segment.close":
            await self._close_segment(message)
        elif kind == "avatar.speech.interrupt":
            await self._interrupt()
        elif kind == "sdk.message.send":
            data = message.get("data")
            if isinstance(data, dict):
                with self._lock:
                    self._state.browser_messages.append(data)
                if self.on_browser_message is not None:
                    self.on_browser_message(data)
            else:
                self._violation("sdk.message.send without a data object")
        else:
            self._violation(f"unknown message type {kind!r}")
            await self._error("message.type.error", f"Unknown message type: {kind}")

    async def _error(self, subtype: str, reason: str) -> None:
        await self._send({"type": "error", "subtype": subtype, "reason": reason})

    async def _create(self, message: dict[str, Any]) -> None:
        uid = message.get("segment_uid")
        if not isinstance(uid, str) or not uid:
            self._violation("segment.create without a segment_uid")
            await self._error("avatar.speech.segment.error", "segment_uid is required")
            return
        if self._open is not None:
            self._violation(f"segment {uid!r} created while {self._open.segment_uid!r} is open")
            await self._error("avatar.speech.segment.error", "A segment is already open")
            return
        self._counter += 1
        segment = Segment(uid, f"seg_{self._counter}", time.time())
        with self._lock:
            self._state.segments.append(segment)
            self._open = segment
            self._queue.append(segment)
        await self._send(
            {
                "type": "avatar.speech.segment.created",
                "segment_id": segment.segment_id,
                "segment_uid": uid,
            }
        )

    async def _close_segment(self, message: dict[str, Any]) -> None:
        uid = message.get("segment_uid")
        segment = self._open
        if segment is None or segment.segment_uid != uid:
            self._violation(f"segment.close for {uid!r}, which is not the open segment")
            await self._error("avatar.speech.segment.error", "No such open segment")
            return
        with self._lock:
            segment.closed_at = time.time()
            self._open = None
        await self._send(
            {
                "type": "avatar.speech.segment.closed",
                "segment_id": segment.segment_id,
                "segment_uid": segment.segment_uid,
            }
        )

    async def _interrupt(self) -> None:
        """Discard what is buffered; report how much of the playing segment was played.

        With nothing playing, nothing is reported (inferred)."""
        with self._lock:
            self._state.interrupts += 1
            playing = self._playing
            dropped = [s for s in self._queue if s.interrupted_at is None]
            self._queue.clear()
            self._playing = None
            now = time.time()
            for segment in dropped:
                segment.interrupted_at = now
        if playing is None:
            return
        self._advance(playing, time.monotonic())
        segment = playing.segment
        with self._lock:
            segment.interrupted_at = time.time()
            segment.played_duration = round(playing.played_ms / 1000, 3)
        await self._send(
            {
                "type": "avatar.speech.segment.playback.interrupted",
                "segment_id": segment.segment_id,
                "segment_uid": segment.segment_uid,
                "played_duration": segment.played_duration,
            }
        )

    def _advance(self, playback: _Playback, now: float) -> None:
        """Play what has arrived, at `playback_rate` times real time."""
        elapsed_ms = (now - playback.last) * 1000 * self.playback_rate
        playback.last = now
        playback.played_ms = min(playback.segment.audio_ms, playback.played_ms + elapsed_ms)

    async def _play(self) -> None:
        """The avatar's playback clock: segments in order, each from its first audio."""
        try:
            await self._clock()
        except ConnectionClosed:
            return

    async def _clock(self) -> None:
        while True:
            now = time.monotonic()
            event: dict[str, Any] | None = None
            with self._lock:
                if self._playing is None and self._queue and self._queue[0].bytes > 0:
                    segment = self._queue[0]
                    self._playing = _Playback(segment, now, last=now)
                    segment.playback_started_at = time.time()
                    event = {
                        "type": "avatar.speech.segment.playback.started",
                        "segment_id": segment.segment_id,
                        "segment_uid": segment.segment_uid,
                        "timestamp": segment.playback_started_at,
                    }
            if event is not None:
                await self._send(event)
                continue
            playing = self._playing
            if playing is not None:
                self._advance(playing, now)
                segment = playing.segment
                if not segment.open and playing.played_ms >= segment.audio_ms:
                    with self._lock:
                        self._playing = None
                        if self._queue and self._queue[0] is segment:
                            self._queue.pop(0)
                        segment.playback_ended_at = time.time()
                    await self._send(
                        {
                            "type": "avatar.speech.segment.playback.ended",
                            "segment_id": segment.segment_id,
                            "segment_uid": segment.segment_uid,
                            "timestamp": segment.playback_ended_at,
                        }
                    )
                    continue
            with self._lock:
                empty = [s for s in self._queue if not s.open and s.bytes == 0]
                for segment in empty:  # closed without audio: nothing to play
                    self._queue.remove(segment)
            await asyncio.sleep(TICK)
