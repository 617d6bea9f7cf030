"""The bridge between Avaturn's engine socket and OpenAI Realtime, in plain asyncio.

Both sockets are injected (``AvaturnSocket``, ``RealtimeSocket``), so the bridge runs
without a server: its host (the Channels consumer) accepts Avaturn's socket, opens
OpenAI's (``engine.realtime.connect_realtime``), feeds Avaturn's frames in
(``feed_audio``, ``feed_message``) and awaits ``run()``. The bridge never closes
Avaturn's socket and never touches the database; ``run()`` closes OpenAI's socket
before it returns.

Audio is PCM16 mono 24 kHz both ways and is never resampled nor paced: Avaturn owns
the playback clock and buffers each segment. One segment per response audio item
(``segments.Segments``); on barge-in (OpenAI's ``input_audio_buffer.speech_started``
while a segment is open or still playing) Avaturn is interrupted, the model's items
are truncated to what was heard, and a response still active is cancelled.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import enum
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from django_avaturn.engine import protocol
from django_avaturn.engine.segments import DROP, FORWARD, REOPEN, Segments
from django_avaturn.logs import get_logger
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)


class AvaturnSocket(Protocol):
    """The engine side of Avaturn's socket."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_text(self, text: str) -> None: ...


class RealtimeSocket(Protocol):
    """OpenAI Realtime; the ``openai`` SDK's ``AsyncRealtimeConnection`` satisfies it."""

    async def send_raw(self, data: bytes | str) -> None: ...

    async def recv_bytes(self) -> bytes: ...

    async def close(self, *, code: int = 1000, reason: str = "") -> None: ...


# (call_id, name, arguments JSON) -> the output for the model (a string, usually JSON).
RunTool = Callable[[str, str, str], Awaitable[str]]
# (role "user" | "avatar", text)
OnTranscript = Callable[[str, str], Awaitable[None]]


class EndCause(enum.Enum):
    STOPPED = "stopped"  # stop() was called
    OPENAI_CLOSED = "openai_closed"  # OpenAI closed the socket normally
    OPENAI_FAILED = "openai_failed"  # an abnormal close, or the socket failed


# What the model is asked to say when a tool is slow (an out-of-band response).
CHECKING_NOTICE = (
    "A tool you called is still running. In a few words, tell the user you are "
    "checking and will answer in a moment. Do not guess the result."
)
# How ``say()`` asks the model to speak a text verbatim.
SAY_INSTRUCTIONS = "Say exactly the following, word for word, and nothing else:\n\n{text}"
# The output given to the model when run_tool itself raised.
TOOL_FAILED_OUTPUT = '{"error": "The tool failed."}'
NO_TOOLS_OUTPUT = '{"error": "No tools are available."}'
# Longest close reason or error message kept in a log line or ``end_detail``.
_DETAIL_MAX = 200

_a2b = binascii.a2b_base64


# OpenAI's refusal of a response.create while a response is active.
ALREADY_ACTIVE = "conversation_already_has_active_response"
# The active response is one OpenAI started whose id has not arrived.
_UNKNOWN_RESPONSE = "?"


def _short(value: object) -> str:
    """An upstream's words, for a log line, a row and a close reason: no credential in it
    (an error may echo what was sent: a tool's header, a key), on one line, not too long."""
    return excerpt(str(value), limit=_DETAIL_MAX)


class Bridge:
    """One conversation: Avaturn's audio to OpenAI, OpenAI's audio to Avaturn."""

    def __init__(
        self,
        avaturn: AvaturnSocket,
        realtime: RealtimeSocket,
        *,
        run_tool: RunTool | None = None,
        on_transcript: OnTranscript | None = None,
        tool_notice_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._avaturn = avaturn
        self._realtime = realtime
        self._run_tool = run_tool
        self._on_transcript = on_transcript
        self._tool_notice_after = tool_notice_after
        self._clock = clock
        self.segments = Segments()
        # Why run() returned, in words for the session row and the log (no secrets).
        self.end_detail = ""
        self._active_response: str | None = None
        # The response.create events waiting for the active response to finish (OpenAI
        # allows one active response at a time), in order.
        self._queued_responses: list[str] = []
        self._tools: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Calls whose output was sent; a response.create follows once none is running.
        self._outputs_pending = False
        self._notice_wanted = False
        self._notice_given: set[str] = set()
        self._stopped = False
        self._stop_waiter: asyncio.Future[None] | None = None
        self._last_error = ""
        # The event_id of the response.create sent last, which OpenAI has not yet
        # answered with response.created: an error naming it means it was refused.
        self._create_event_id = ""
        self._creates_sent = 0
        # What that response.create asked, to ask again should OpenAI refuse it because
        # a response of its own (server VAD's) was active.
        self._last_create = ""
        # OpenAI refused the session.update (an error naming it): run() ends.
        self._session_refused = False
        # The byte of a PCM16 sample a microphone frame split, kept for the next frame.
        self._split_sample = b""

    # The host's calls.

    async def feed_audio(self, pcm: bytes) -> None:
        """A binary frame from Avaturn: the visitor's microphone, PCM16 24 kHz.

        OpenAI hears whole samples only: an odd byte waits for the next frame,
        and a frame with no whole sample sends nothing.
        """
        if self._stopped:
            return
        if self._split_sample:
            pcm = self._split_sample + pcm
        cut = len(pcm) & ~1
        pcm, self._split_sample = pcm[:cut], pcm[cut:]
        if not pcm:
            return
        # A closed socket: run() sees the same close on its next receive and reports it.
        with contextlib.suppress(ConnectionClosed):
            await self._realtime.send_raw(protocol.audio_append(pcm))

    async def feed_message(self, text: str) -> None:
        """A JSON text frame from Avaturn."""
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # (RecursionError: nested too deeply)
            logger.warning("Avaturn sent a text frame that is not JSON (%d chars).", len(text))
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        segments = self.segments
        if kind == protocol.PLAYBACK_STARTED:
            segments.playback_started(message.get("segment_uid"), self._clock())
        elif kind == protocol.PLAYBACK_ENDED:
            segments.playback_ended(message.get("segment_uid"))
        elif kind == protocol.PLAYBACK_INTERRUPTED:
            truncation = segments.playback_interrupted(
                message.get("segment_uid"), message.get("played_duration"), self._clock()
            )
            if truncation is not None:
                with contextlib.suppress(ConnectionClosed):
                    await self._realtime.send_raw(
                        protocol.item_truncate(truncation.item_id, truncation.audio_end_ms)
                    )
        elif kind == protocol.AVATURN_ERROR:
            logger.warning(
                "Avaturn reported an error: %s: %s",
                _short(message.get("subtype")),
                _short(message.get("reason")),
            )
        # segment.created / .closed acknowledge what was sent and change nothing here;
        # sdk.message.receive has no sender in the web SDK's public API.

    async def send_to_browser(self, data: dict[str, Any]) -> None:
        """Send ``data`` to the page (an ``avaturn:message`` DOM event there)."""
        await self._avaturn.send_text(protocol.browser_message(data))

    async def say(self, text: str) -> None:
        """Have the avatar speak ``text`` (after the current response, if one is active).

        A no-op once the conversation has ended; a text still waiting when the visitor
        barges in is dropped with the response it waited for.
        """
        if self._stopped:
            return
        with contextlib.suppress(ConnectionClosed):
            await self._create_response(SAY_INSTRUCTIONS.format(text=text))

    async def page_message(self, data: dict[str, Any], *, respond: bool = False) -> None:
        """Give the model a message from the visitor's page, as the visitor's input.

        With ``respond`` the model answers it (after the current response, if one is
        active); without, it is context for the model's next answer. A no-op once the
        conversation has ended.
        """
        if self._stopped:
            return
        with contextlib.suppress(ConnectionClosed):
            await self._realtime.send_raw(protocol.page_message(data))
            if respond:
                await self._request_response(protocol.RESPONSE_CREATE)

    async def stop(self) -> None:
        """End the conversation: run() returns STOPPED; running tool calls are cancelled."""
        self._stopped = True
        if self._stop_waiter is not None and not self._stop_waiter.done():
            self._stop_waiter.set_result(None)
        self._cancel_tools()

    async def run(self) -> EndCause:
        """Pump OpenAI's events until OpenAI closes or fails, or ``stop()``."""
        loop = asyncio.get_running_loop()
        self._stop_waiter = loop.create_future()
        if self._stopped:
            self._stop_waiter.set_result(None)
        pump = loop.create_task(self._pump())
        try:
            waiters: set[asyncio.Future[Any]] = {pump, self._stop_waiter}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                cause = pump.result()
            else:
                cause = EndCause.STOPPED
                self.end_detail = "The site ended the conversation."
            return cause
        finally:
            self._stopped = True
            if not pump.done():
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            self._cancel_tools()
            with contextlib.suppress(Exception):
                await self._realtime.close()

    # OpenAI's events.

    async def _pump(self) -> EndCause:
        recv = self._realtime.recv_bytes
        loads = json.loads
        while True:
            try:
                raw = await recv()
            except ConnectionClosedOK as exc:
                self.end_detail = self._close_detail("OpenAI closed the connection", exc)
                return EndCause.OPENAI_CLOSED
            except ConnectionClosed as exc:
                self.end_detail = self._close_detail("OpenAI's connection failed", exc)
                return EndCause.OPENAI_FAILED
            except Exception as exc:
                self.end_detail = f"OpenAI's connection failed ({type(exc).__name__})."
                logger.warning("OpenAI Realtime: %s", self.end_detail)
                return EndCause.OPENAI_FAILED
            try:
                event = loads(raw)
                kind = event["type"]
            except (ValueError, RecursionError, TypeError, KeyError):
                logger.warning("OpenAI Realtime sent an event that is not JSON with a type.")
                continue
            if kind == "response.output_audio.delta":
                await self._on_audio_delta(event)
            else:
                await self._on_event(kind, event)
                if self._session_refused:
                    return EndCause.OPENAI_FAILED

    def _close_detail(self, what: str, exc: ConnectionClosed) -> str:
        frame = exc.rcvd
        detail = what
        if frame is not None:
            detail += f" (code {frame.code}"
            detail += f": {_short(frame.reason)})" if frame.reason else ")"
        if self._last_error:
            detail += f"; its last error: {self._last_error}"
        return detail + "."

    async def _on_audio_delta(self, event: dict[str, Any]) -> None:
        try:
            pcm = _a2b(event["delta"])
            response_id = event["response_id"]
            item_id = event["item_id"]
        except (KeyError, TypeError, binascii.Error):
            logger.warning("OpenAI Realtime sent an audio delta without audio or ids.")
            return
        verdict = self.segments.audio(response_id, item_id, len(pcm), self._clock())
        if verdict == FORWARD:
            await self._avaturn.send_bytes(pcm)
        elif verdict == DROP:
            return
        else:
            if verdict == REOPEN:
                await self._avaturn.send_text(protocol.segment_close(self.segments.closed_uid))
            current = self.segments.current
            assert current is not None  # OPEN and REOPEN leave the new segment open
            await self._avaturn.send_text(protocol.segment_create(current.uid))
            await self._avaturn.send_bytes(pcm)

    async def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "input_audio_buffer.speech_started":
            await self._barge_in()
        elif kind == "response.created":
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self._active_response = response["id"]
        elif kind == "response.output_audio.done":
            response_id = event.get("response_id")
            if isinstance(response_id, str):
                close = self.segments.response_audio_done(response_id)
                if close is not None:
                    await self._avaturn.send_text(close)
        elif kind == "response.done":
            await self._on_response_done(event)
        elif kind == "response.function_call_arguments.done":
            self._start_tool(event)
        elif kind == "conversation.item.input_audio_transcription.completed":
            await self._transcript("user", event.get("transcript"))
        elif kind == "response.output_audio_transcript.done":
            await self._transcript("avatar", event.get("transcript"))
        elif kind == "error":
            await self._on_error(event)

    async def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        response_id = response.get("id") if isinstance(response, dict) else None
        if isinstance(response_id, str):
            close = self.segments.response_done(response_id)
            if close is not None:
                await self._avaturn.send_text(close)
        if response_id is None or self._active_response in (response_id, _UNKNOWN_RESPONSE):
            self._active_response = None
        if self._active_response is None:
            await self._after_response()

    async def _after_response(self) -> None:
        """No response is active: send what waited for that, one response at a time."""
        if self._outputs_pending and not self._tools:
            self._outputs_pending = False
            await self._send_response(protocol.RESPONSE_CREATE)
        elif self._queued_responses:
            await self._send_response(self._queued_responses.pop(0))
        elif self._notice_wanted and self._tools:
            self._notice_wanted = False
            await self._send_notice()

    async def _send_response(self, data: str) -> None:
        # Active until its response.created/response.done say otherwise: nothing else is
        # created in between (OpenAI refuses a second active response).
        self._active_response = ""
        self._creates_sent += 1
        self._create_event_id = f"django_avaturn_response_{self._creates_sent}"
        self._last_create = data
        event = json.loads(data)
        event["event_id"] = self._create_event_id
        await self._realtime.send_raw(json.dumps(event, separators=(",", ":")))

    async def _create_response(self, instructions: str) -> None:
        await self._request_response(protocol.response_with_instructions(instructions))

    async def _request_response(self, data: str) -> None:
        """Send ``data`` (a ``response.create``) now, or once the active response is done."""
        if self._active_response is not None:
            self._queued_responses.append(data)
        else:
            await self._send_response(data)

    async def _on_error(self, event: dict[str, Any]) -> None:
        error = event.get("error")
        if isinstance(error, dict):
            code = _short(error.get("code") or error.get("type") or "unknown")
            message = _short(error.get("message") or "")
            refused_event = error.get("event_id")
        else:
            code, message, refused_event = "unknown", "", None
        self._last_error = code
        if refused_event == protocol.SESSION_UPDATE_EVENT_ID:
            # Without its configuration the model would talk without the site's
            # instructions and tools: the conversation ends (run() returns OPENAI_FAILED).
            self.end_detail = f"OpenAI Realtime refused the session ({code}: {message})."
            logger.warning("%s", self.end_detail)
            self._session_refused = True
            return
        # Advisory: OpenAI refuses one client event and the conversation goes on (a
        # fatal error is followed by OpenAI closing the socket, which ends run()).
        logger.warning("OpenAI Realtime error (the call goes on): %s: %s", code, message)
        # The response.create awaiting its response.created was refused (the error names
        # it, or names no event at all): none will start, so what waits goes now. An
        # error about another event (a response.cancel after the turn detection had
        # cancelled already) leaves it waiting.
        if code == ALREADY_ACTIVE and refused_event == self._create_event_id:
            # A response OpenAI started itself (server VAD) was active: ask again once it
            # is done, so a tool's answer or a said text is not lost. Its response.created
            # may be still to come; if not, its response.done frees the slot.
            if self._last_create == protocol.RESPONSE_CREATE:
                self._outputs_pending = True
            else:
                self._queued_responses.insert(0, self._last_create)
            self._last_create = ""
            if self._active_response == "":
                self._active_response = _UNKNOWN_RESPONSE
            return
        if self._active_response == "" and refused_event in (None, self._create_event_id):
            self._active_response = None
            await self._after_response()

    async def _barge_in(self) -> None:
        result = self.segments.barge_in(self._clock())
        for text in result.to_avaturn:
            await self._avaturn.send_text(text)
        for truncation in result.truncations:
            await self._realtime.send_raw(
                protocol.item_truncate(truncation.item_id, truncation.audio_end_ms)
            )
        active = self._active_response
        if active is not None:
            if active and active != _UNKNOWN_RESPONSE:
                self.segments.drop_response(active)
            # OpenAI's server VAD may have cancelled it already: its refusal is advisory.
            await self._realtime.send_raw(protocol.RESPONSE_CANCEL)
        # What was waiting to be said after the interrupted response is dropped with it.
        self._queued_responses.clear()

    async def _transcript(self, role: str, text: object) -> None:
        if self._on_transcript is None or not isinstance(text, str) or not text:
            return
        try:
            await self._on_transcript(role, text)
        except Exception:
            logger.exception("Writing a %s transcript line failed.", role)

    # Tools.

    def _start_tool(self, event: dict[str, Any]) -> None:
        call_id = event.get("call_id")
        name = event.get("name")
        arguments = event.get("arguments")
        if not isinstance(call_id, str) or not isinstance(name, str):
            logger.warning("OpenAI Realtime sent a function call without a call id or name.")
            return
        if call_id in self._tools or self._stopped:
            return
        if not isinstance(arguments, str):
            arguments = "{}"
        task = asyncio.get_running_loop().create_task(self._call_tool(call_id, name, arguments))
        self._tools[call_id] = task

    async def _call_tool(self, call_id: str, name: str, arguments: str) -> None:
        notice = None
        if self._tool_notice_after is not None:
            notice = asyncio.get_running_loop().call_later(
                self._tool_notice_after, self._notice_due, call_id
            )
        try:
            if self._run_tool is None:
                output = NO_TOOLS_OUTPUT
            else:
                try:
                    output = await self._run_tool(call_id, name, arguments)
                except Exception:
                    logger.exception("Running the tool %r failed.", name)
                    output = TOOL_FAILED_OUTPUT
        finally:
            if notice is not None:
                notice.cancel()
            self._notice_given.discard(call_id)
        del self._tools[call_id]
        if self._stopped:
            return
        try:
            await self._realtime.send_raw(protocol.function_call_output(call_id, output))
            self._outputs_pending = True
            if self._active_response is None:
                await self._after_response()
        except ConnectionClosed:
            pass  # run() reports the close
        except Exception:
            logger.exception("Sending the output of the tool %r to OpenAI failed.", name)

    def _notice_due(self, call_id: str) -> None:
        if call_id not in self._tools or self._stopped:
            return
        if self._notice_given:
            return  # one notice at a time for calls running together
        self._notice_given.add(call_id)
        if self._active_response is None:
            task = asyncio.get_running_loop().create_task(self._send_notice())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self._notice_wanted = True

    async def _send_notice(self) -> None:
        if self._active_response is not None or self._stopped:
            self._notice_wanted = True
            return
        with contextlib.suppress(ConnectionClosed):
            await self._send_response(
                protocol.response_with_instructions(CHECKING_NOTICE, out_of_band=True)
            )

    def _cancel_tools(self) -> None:
        for task in [*self._tools.values(), *self._background]:
            task.cancel()
