"""The bridge with both sockets injected: segments, barge-in, tools, transcripts, ending.

Each test drives OpenAI's side one event at a time (``MemoryRealtime.push`` returns
once the bridge has handled it) and asserts on what each socket received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from django_avaturn.engine import protocol
from django_avaturn.engine.bridge import (
    CHECKING_NOTICE,
    NO_TOOLS_OUTPUT,
    TOOL_FAILED_OUTPUT,
    Bridge,
    EndCause,
)
from tests.engine_helpers import (
    SPEECH_STARTED,
    MemoryAvaturn,
    MemoryRealtime,
    Running,
    SegmentChecker,
    audio_delta,
    audio_done,
    avaturn,
    function_call,
    openai_error,
    pcm,
    response_created,
    response_done,
)
from tests.helpers import run_coroutine


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_coroutine(asyncio.wait_for(test(), 10))


# Audio both ways.


def test_microphone_frames_go_to_openai_as_base64_appends_unchanged() -> None:
    async def test() -> None:
        async with Running() as r:
            frame = bytes(range(256)) * 3 + b"\x00" * 192  # 20 ms: 960 bytes
            await r.bridge.feed_audio(frame)
            assert r.realtime.events() == [
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}
            ]
            assert r.avaturn.sent == []

    run(test)


def test_microphone_frames_reach_openai_as_whole_samples_and_empty_ones_not_at_all() -> None:
    """A PCM16 sample split across frames is joined; a frame with none sends nothing."""

    async def test() -> None:
        async with Running() as r:
            for frame in (b"", b"\x01\x02\x03", b"", b"\x04", b"\x05", b"\x06\x07\x08"):
                await r.bridge.feed_audio(frame)
            sent = [base64.b64decode(event["audio"]) for event in r.realtime.events()]
            assert sent == [b"\x01\x02", b"\x03\x04", b"\x05\x06\x07\x08"]

    run(test)


def test_a_response_is_one_segment_with_all_its_audio_inside() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(response_created("r1"))
            await r.speak("r1", "i1", pcm(20, 1), pcm(20, 2), pcm(40, 3))
            await r.realtime.push(response_done("r1"))
            types = [
                item if isinstance(item, bytes) else json.loads(item)["type"]
                for item in r.avaturn.sent
            ]
            assert types == [
                "avatar.speech.segment.create",
                pcm(20, 1),
                pcm(20, 2),
                pcm(40, 3),
                "avatar.speech.segment.close",
            ]
            create, close = r.avaturn.messages()
            assert create["segment_uid"] == close["segment_uid"]
            # Nothing went back to OpenAI: no pacing, no acknowledgement.
            assert r.realtime.sent == []

    run(test)


def test_output_audio_done_closes_the_segment_and_the_next_response_opens_another() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.speak("r1", "i1", pcm(20))
            await r.realtime.push(audio_done("r1", "i1"))
            await r.realtime.push(response_done("r1"))
            await r.speak("r2", "i2", pcm(20))
            await r.realtime.push(response_done("r2"))
            assert r.avaturn.types() == [
                "avatar.speech.segment.create",
                "avatar.speech.segment.close",
                "avatar.speech.segment.create",
                "avatar.speech.segment.close",
            ]
            assert SegmentChecker().check(r.avaturn.sent) == []
            assert len({m["segment_uid"] for m in r.avaturn.messages()}) == 2

    run(test)


# Barge-in.


def test_barge_in_interrupts_truncates_to_what_was_played_and_cancels() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(response_created("r1"))
            await r.speak("r1", "item-1", pcm(1000), pcm(1000))  # 2 s generated
            uid = r.avaturn.messages()[0]["segment_uid"]
            await r.bridge.feed_message(avaturn("created", segment_uid=uid, segment_id="s"))
            await r.bridge.feed_message(avaturn("playback.started", segment_uid=uid, timestamp=5))
            r.clock.now += 0.8
            await r.realtime.push(SPEECH_STARTED)
            assert r.avaturn.types()[-2:] == [
                "avatar.speech.segment.close",
                "avatar.speech.interrupt",
            ]
            assert r.realtime.events() == [
                {
                    "type": "conversation.item.truncate",
                    "item_id": "item-1",
                    "content_index": 0,
                    "audio_end_ms": 800,
                },
                {"type": "response.cancel"},
            ]
            # Audio of the cancelled response still in flight is dropped.
            sent_before = len(r.avaturn.sent)
            await r.speak("r1", "item-1", pcm(20, 9))
            await r.realtime.push(response_done("r1", "cancelled"))
            assert r.avaturn.sent[sent_before:] == []
            assert pcm(20, 9) not in r.avaturn.sent
            assert SegmentChecker().check(r.avaturn.sent) == []

    run(test)


def test_barge_in_while_a_finished_response_still_plays_clamps_to_what_was_generated() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(response_created("r1"))
            await r.speak("r1", "item-1", pcm(300))
            await r.realtime.push(response_done("r1"))
            uid = r.avaturn.messages()[0]["segment_uid"]
            await r.bridge.feed_message(avaturn("playback.started", segment_uid=uid))
            r.clock.now += 0.2
            await r.realtime.push(SPEECH_STARTED)
            assert r.avaturn.types()[-1] == "avatar.speech.interrupt"
            assert r.realtime.of_type("conversation.item.truncate")[0]["audio_end_ms"] == 200
            # No response is active: nothing to cancel.
            assert "response.cancel" not in r.realtime.types()

        async with Running() as r:
            # The clock is past the end of the 300 ms generated: clamped (OpenAI refuses
            # a truncation past its audio) — here Avaturn never reported playback.
            # The response is still generating, its audio arriving slower than it plays.
            await r.realtime.push(response_created("r1"))
            await r.speak("r1", "item-1", pcm(300))
            r.clock.now += 3
            await r.realtime.push(SPEECH_STARTED)
            assert r.realtime.of_type("conversation.item.truncate")[0]["audio_end_ms"] == 300

    run(test)


def test_speech_with_nothing_playing_sends_nothing_and_after_playback_ended_neither() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(SPEECH_STARTED)
            assert r.avaturn.sent == [] and r.realtime.sent == []
            await r.speak("r1", "i1", pcm(100))
            await r.realtime.push(response_done("r1"))
            uid = r.avaturn.messages()[0]["segment_uid"]
            await r.bridge.feed_message(avaturn("playback.started", segment_uid=uid))
            await r.bridge.feed_message(avaturn("playback.ended", segment_uid=uid))
            await r.realtime.push(SPEECH_STARTED)
            assert "avatar.speech.interrupt" not in r.avaturn.types()
            assert r.realtime.sent == []

    run(test)


def test_a_response_active_before_its_audio_is_cancelled_and_its_audio_dropped() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(response_created("r1"))
            await r.realtime.push(SPEECH_STARTED)
            assert r.realtime.types() == ["response.cancel"]
            await r.speak("r1", "i1", pcm(20))
            assert r.avaturn.sent == []

    run(test)


def test_avaturn_cutting_playback_itself_truncates_the_item() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.speak("r1", "i1", pcm(2000))
            await r.realtime.push(response_done("r1"))
            uid = r.avaturn.messages()[0]["segment_uid"]
            await r.bridge.feed_message(
                avaturn("playback.interrupted", segment_uid=uid, played_duration=1.5)
            )
            assert r.realtime.of_type("conversation.item.truncate") == [
                {
                    "type": "conversation.item.truncate",
                    "item_id": "i1",
                    "content_index": 0,
                    "audio_end_ms": 1500,
                }
            ]

    run(test)


# Errors and ending.


def test_advisory_errors_are_logged_and_the_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(
                openai_error(
                    "response_cancel_not_active",
                    "Cancellation failed: no active response found",
                    type="invalid_request_error",
                )
            )
            await r.realtime.push(b"not json")
            await r.bridge.feed_message('{"type": "error", "subtype": "json.parsing.error"}')
            await r.bridge.feed_message("not json either")
            assert r.task is not None and not r.task.done()
            await r.speak("r1", "i1", pcm(20))
            assert r.avaturn.audio() == pcm(20)

    with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.bridge"):
        run(test)
    text = caplog.text
    assert "response_cancel_not_active" in text
    assert "json.parsing.error" in text


def test_frames_nested_too_deeply_are_junk_not_the_end_of_the_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Python's JSON raises RecursionError, not ValueError, for ``[[[...]]]`` deep enough."""
    deep = "[" * 100_000 + "]" * 100_000

    async def test() -> None:
        async with Running() as r:
            await r.bridge.feed_message(deep)
            await r.realtime.push(deep.encode())
            assert r.task is not None and not r.task.done()
            await r.speak("r1", "i1", pcm(20))
            assert r.avaturn.audio() == pcm(20)

    with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.bridge"):
        run(test)
    assert "Avaturn sent a text frame that is not JSON (200000 chars)." in caplog.text
    assert "OpenAI Realtime sent an event that is not JSON with a type." in caplog.text
    assert "RecursionError" not in caplog.text


def test_an_avaturn_error_is_logged_on_one_line_with_its_control_characters_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The peer's words must not forge a log line of their own, nor carry a NUL."""

    async def test() -> None:
        async with Running() as r:
            await r.bridge.feed_message(
                json.dumps({"type": "error", "subtype": "x\nFAKE: y", "reason": "\x00\r\x1b[31m"})
            )

    with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.bridge"):
        run(test)
    (line,) = [r.getMessage() for r in caplog.records if "Avaturn reported" in r.getMessage()]
    # Whitespace runs become one space; what is left unprintable is escaped.
    assert line == "Avaturn reported an error: x FAKE: y: \\x00 \\x1b[31m"


@pytest.mark.parametrize(
    ("played", "audio_end_ms"),
    [("NaN", 0), ("-1e999", 0), ("1e999", 0), ("Infinity", 0), ("1e300", None)],
)
def test_an_absurd_played_duration_is_bounded_by_what_was_generated(
    played: str, audio_end_ms: int | None
) -> None:
    """Python's JSON reads NaN, Infinity and overflowing numbers: none may raise. One not
    finite is no report (what the clock says was played); a huge one, all of it."""

    async def test() -> None:
        async with Running() as r:
            await r.speak("r1", "i1", pcm(2000))
            await r.realtime.push(response_done("r1"))
            uid = r.avaturn.messages()[0]["segment_uid"]
            await r.bridge.feed_message(
                '{"type": "avatar.speech.segment.playback.interrupted", '
                f'"segment_uid": "{uid}", "played_duration": {played}}}'
            )
            assert r.task is not None and not r.task.done()
            truncates = r.realtime.of_type("conversation.item.truncate")
            if audio_end_ms is None:
                assert truncates == []
            else:
                assert [t["audio_end_ms"] for t in truncates] == [audio_end_ms]

    run(test)


def test_openai_refusing_the_session_ends_run(caplog: pytest.LogCaptureFixture) -> None:
    """Without its configuration the model would talk without the site's instructions and
    tools: an error naming the session.update ends the conversation."""

    async def test() -> None:
        async with Running() as r:
            await r.realtime.push_last(
                openai_error(
                    "invalid_value",
                    "Invalid value: 'nobody'. Supported values are: 'marin'.",
                    type="invalid_request_error",
                    param="session.audio.output.voice",
                    event_id=protocol.SESSION_UPDATE_EVENT_ID,
                )
            )
            assert r.task is not None
            assert await asyncio.wait_for(r.task, 2) == EndCause.OPENAI_FAILED
            assert r.bridge.end_detail == (
                "OpenAI Realtime refused the session (invalid_value: Invalid value: 'nobody'. "
                "Supported values are: 'marin'.)."
            )
            assert r.realtime.closed

    with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.bridge"):
        run(test)
    assert "the call goes on" not in caplog.text


def test_a_credential_openai_echoes_reaches_neither_the_log_nor_the_end_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error may echo what was sent (a tool server's bearer token in the session)."""
    echoed = "Bearer mcp-token-0123456789abcdef"

    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(openai_error("invalid_value", f"Bad {echoed}"))
            await r.realtime.push_last(
                openai_error(
                    "invalid_value",
                    f"Refused header Authorization: {echoed}",
                    event_id=protocol.SESSION_UPDATE_EVENT_ID,
                )
            )
            assert r.task is not None
            assert await asyncio.wait_for(r.task, 2) == EndCause.OPENAI_FAILED
            assert "mcp-token" not in r.bridge.end_detail
            assert "[redacted]" in r.bridge.end_detail

    with caplog.at_level(logging.WARNING, logger="django_avaturn.engine.bridge"):
        run(test)
    assert "mcp-token" not in caplog.text
    assert caplog.text.count("[redacted]") == 2


@pytest.mark.parametrize(
    ("code", "cause"),
    [(1000, EndCause.OPENAI_CLOSED), (1011, EndCause.OPENAI_FAILED)],
)
def test_openai_closing_ends_run_with_its_cause(code: int, cause: EndCause) -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(openai_error("session_expired", "Expired"))
            await r.realtime.close_from_server(code, "bye")
            assert r.task is not None
            assert await asyncio.wait_for(r.task, 2) == cause
            assert f"code {code}: bye" in r.bridge.end_detail
            assert "session_expired" in r.bridge.end_detail
            assert r.realtime.closed
            # Frames Avaturn sends after the end are not forwarded.
            await r.bridge.feed_audio(pcm(20))
            assert r.realtime.sent == []

    run(test)


def test_stop_ends_run_cancels_tools_and_closes_openai() -> None:
    async def test() -> None:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def run_tool(call_id: str, name: str, arguments: str) -> str:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "{}"

        async with Running(run_tool=run_tool) as r:
            await r.realtime.push(function_call("c1", "slow"))
            await asyncio.wait_for(started.wait(), 2)
            await r.bridge.stop()
            assert r.task is not None
            assert await asyncio.wait_for(r.task, 2) == EndCause.STOPPED
            await asyncio.wait_for(cancelled.wait(), 2)
            assert r.realtime.closed
            assert "conversation.item.create" not in r.realtime.types()

    run(test)


def test_stop_before_run_returns_at_once() -> None:
    async def test() -> None:
        realtime = MemoryRealtime()
        bridge = Bridge(MemoryAvaturn(), realtime)
        await bridge.stop()
        assert await asyncio.wait_for(bridge.run(), 2) == EndCause.STOPPED
        assert realtime.closed

    run(test)


# Tools.


def test_a_tool_runs_while_audio_flows_and_its_output_goes_back_with_a_response() -> None:
    async def test() -> None:
        release = asyncio.Event()
        calls: list[tuple[str, str, str]] = []

        async def run_tool(call_id: str, name: str, arguments: str) -> str:
            calls.append((call_id, name, arguments))
            await release.wait()
            return '{"orders": 2}'

        async with Running(run_tool=run_tool) as r:
            await r.realtime.push(response_created("r-call"))
            await r.realtime.push(function_call("c1", "count_orders", '{"status": "open"}'))
            await r.realtime.push(response_done("r-call"))
            assert calls == [("c1", "count_orders", '{"status": "open"}')]
            # The socket keeps pumping both ways while the tool runs.
            await r.bridge.feed_audio(pcm(20))
            await r.speak("r-other", "i9", pcm(20))
            assert r.realtime.types() == ["input_audio_buffer.append"]
            assert r.avaturn.audio() == pcm(20)
            await r.realtime.push(response_done("r-other"))
            release.set()
            await r.realtime.wait_idle()
            assert r.realtime.types()[1:] == ["conversation.item.create", "response.create"]
            assert r.realtime.of_type("conversation.item.create")[0]["item"] == {
                "type": "function_call_output",
                "call_id": "c1",
                "output": '{"orders": 2}',
            }

    run(test)


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        # What the tool runner made of a ToolError, a refusal or a timeout: verbatim.
        ("refused", '{"error": "You may not see other people\'s orders."}'),
        ("timeout", '{"error": "The tool timed out."}'),
        # run_tool itself raising: the model is told only that it failed.
        ("raise", TOOL_FAILED_OUTPUT),
    ],
)
def test_tool_outputs_and_failures_reach_the_model(behaviour: str, expected: str) -> None:
    async def test() -> None:
        async def run_tool(call_id: str, name: str, arguments: str) -> str:
            if behaviour == "raise":
                raise RuntimeError("database password is hunter2")
            if behaviour == "timeout":
                return '{"error": "The tool timed out."}'
            return '{"error": "You may not see other people\'s orders."}'

        async with Running(run_tool=run_tool) as r:
            await r.realtime.push(function_call("c1", "orders"))
            await r.realtime.wait_idle()
            item = r.realtime.of_type("conversation.item.create")[0]["item"]
            assert item["output"] == expected
            assert r.realtime.types()[-1] == "response.create"
            assert r.task is not None and not r.task.done()

    run(test)


def test_without_tools_the_model_is_told_none_are_available() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(function_call("c1", "anything"))
            await r.realtime.wait_idle()
            item = r.realtime.of_type("conversation.item.create")[0]["item"]
            assert item["output"] == NO_TOOLS_OUTPUT

    run(test)


def test_a_slow_tool_gets_one_checking_notice_then_its_answer() -> None:
    async def test() -> None:
        async def run_tool(call_id: str, name: str, arguments: str) -> str:
            await asyncio.sleep(0.3)
            return '{"ok": true}'

        async with Running(run_tool=run_tool, tool_notice_after=0.05) as r:
            await r.realtime.push(function_call("c1", "slow"))
            await asyncio.sleep(0.15)
            notices = r.realtime.of_type("response.create")
            assert notices == [
                {
                    "type": "response.create",
                    "response": {"instructions": CHECKING_NOTICE, "conversation": "none"},
                    "event_id": "django_avaturn_response_1",
                }
            ]
            # The notice is spoken like any response (its own segment).
            await r.realtime.push(response_created("r-notice"))
            await r.speak("r-notice", "i-notice", pcm(40))
            await r.realtime.push(response_done("r-notice"))
            await asyncio.sleep(0.3)
            assert r.realtime.types() == [
                "response.create",
                "conversation.item.create",
                "response.create",
            ]
            assert SegmentChecker().check(r.avaturn.sent) == []

    run(test)


def test_a_notice_waits_for_the_active_response_and_a_fast_tool_gets_none() -> None:
    async def test() -> None:
        release = asyncio.Event()

        async def run_tool(call_id: str, name: str, arguments: str) -> str:
            if name == "fast":
                return "{}"
            await release.wait()
            return "{}"

        async with Running(run_tool=run_tool, tool_notice_after=0.05) as r:
            await r.realtime.push(function_call("c0", "fast"))
            await asyncio.sleep(0.1)
            assert r.realtime.types() == ["conversation.item.create", "response.create"]
            await r.realtime.push(response_created("r1"))
            await r.realtime.push(function_call("c1", "slow"))
            await asyncio.sleep(0.1)
            # r1 is still active: no notice yet.
            assert r.realtime.types().count("response.create") == 1
            await r.realtime.push(response_done("r1"))
            created = r.realtime.of_type("response.create")
            assert len(created) == 2
            assert created[1]["response"]["conversation"] == "none"
            release.set()
            await r.realtime.wait_idle()
            # The output waits for the notice's response to finish.
            assert r.realtime.types()[-1] == "conversation.item.create"
            await r.realtime.push(response_created("r-notice"))
            await r.realtime.push(response_done("r-notice"))
            assert r.realtime.types()[-1] == "response.create"
            assert "conversation" not in r.realtime.of_type("response.create")[-1]

    run(test)


# Transcripts, say, the browser.


def test_transcripts_of_both_sides_are_reported() -> None:
    async def test() -> None:
        lines: list[tuple[str, str]] = []

        async def on_transcript(role: str, text: str) -> None:
            if text == "boom":
                raise RuntimeError("the database is down")
            lines.append((role, text))

        async with Running(on_transcript=on_transcript) as r:
            await r.realtime.push(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": "u1",
                    "content_index": 0,
                    "transcript": "Where is my order?",
                }
            )
            await r.realtime.push(
                {
                    "type": "response.output_audio_transcript.done",
                    "response_id": "r1",
                    "item_id": "i1",
                    "transcript": "boom",
                }
            )
            await r.realtime.push(
                {
                    "type": "response.output_audio_transcript.done",
                    "response_id": "r1",
                    "item_id": "i1",
                    "transcript": "It ships tomorrow.",
                }
            )
            assert lines == [("user", "Where is my order?"), ("avatar", "It ships tomorrow.")]

    run(test)


def test_say_asks_for_the_text_after_the_active_response() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.bridge.say("Welcome back!")
            first = r.realtime.of_type("response.create")
            assert len(first) == 1 and "Welcome back!" in first[0]["response"]["instructions"]
            await r.realtime.push(response_created("r1"))
            await r.bridge.say("Your parcel left.")
            assert len(r.realtime.of_type("response.create")) == 1
            await r.realtime.push(response_done("r1"))
            second = r.realtime.of_type("response.create")[-1]
            assert "Your parcel left." in second["response"]["instructions"]

    run(test)


def test_a_page_message_joins_the_conversation_and_is_answered_after_the_active_response() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.realtime.push(response_created("r1"))
            await r.bridge.page_message({"chose": "red"}, respond=True)
            (item,) = r.realtime.of_type("conversation.item.create")
            assert item["item"]["role"] == "user"
            assert item["item"]["content"][0]["text"].endswith('{"chose":"red"}')
            assert r.realtime.of_type("response.create") == []
            await r.realtime.push(response_done("r1"))
            (create,) = r.realtime.of_type("response.create")
            assert create == {"type": "response.create", "event_id": "django_avaturn_response_1"}
            await r.bridge.page_message({"chose": "blue"})
            assert len(r.realtime.of_type("conversation.item.create")) == 2
            assert len(r.realtime.of_type("response.create")) == 1

    run(test)


def test_an_error_about_another_event_leaves_the_response_create_waiting() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.bridge.say("First.")
            (first,) = r.realtime.of_type("response.create")
            # A cancel refused because the turn detection had cancelled already.
            await r.realtime.push(openai_error("response_cancel_not_active", event_id="evt_cancel"))
            await r.bridge.say("Second.")
            assert len(r.realtime.of_type("response.create")) == 1  # still one active
            # The create itself refused (not for an active response): none will start,
            # so the waiting one goes now.
            await r.realtime.push(openai_error("invalid_value", event_id=first["event_id"]))
            second = r.realtime.of_type("response.create")[-1]
            assert "Second." in second["response"]["instructions"]
            assert second["event_id"] != first["event_id"]

    run(test)


@pytest.mark.parametrize("created_first", [True, False])
def test_a_create_refused_for_openais_own_response_is_asked_again_after_it(
    created_first: bool,
) -> None:
    """Server VAD started a response just as ours was asked: OpenAI refuses ours. It is
    asked again once that response is done (its response.created may come before the
    refusal, or not at all before its response.done), then what waited after it."""

    async def test() -> None:
        async with Running() as r:
            await r.bridge.say("First.")
            (first,) = r.realtime.of_type("response.create")
            await r.bridge.say("Second.")
            if created_first:
                await r.realtime.push(response_created("r_vad"))
            await r.realtime.push(
                openai_error("conversation_already_has_active_response", event_id=first["event_id"])
            )
            assert len(r.realtime.of_type("response.create")) == 1  # nothing while it runs
            await r.realtime.push(response_done("r_vad"))
            again = r.realtime.of_type("response.create")[-1]
            assert "First." in again["response"]["instructions"]
            assert again["event_id"] != first["event_id"]
            await r.realtime.push(response_created("r2"))
            await r.realtime.push(response_done("r2"))
            last = r.realtime.of_type("response.create")[-1]
            assert "Second." in last["response"]["instructions"]

    run(test)


def test_a_tool_answer_refused_for_openais_own_response_is_asked_for_after_it() -> None:
    """The model must still be asked about a tool's output: no dead air after 'checking'."""

    async def echo_tool(call_id: str, name: str, arguments: str) -> str:
        return '{"result": "ok"}'

    async def test() -> None:
        async with Running(run_tool=echo_tool) as r:
            await r.realtime.push(response_created("r_call"))
            await r.realtime.push(function_call("call_1", "echo", "{}"))
            await r.realtime.push(response_done("r_call"))
            (create,) = r.realtime.of_type("response.create")
            await r.realtime.push(response_created("r_vad"))
            await r.realtime.push(
                openai_error(
                    "conversation_already_has_active_response", event_id=create["event_id"]
                )
            )
            await r.realtime.push(response_done("r_vad"))
            assert len(r.realtime.of_type("response.create")) == 2

    run(test)


def test_send_to_browser_wraps_the_data_in_our_namespaced_type() -> None:
    async def test() -> None:
        async with Running() as r:
            await r.bridge.send_to_browser({"kind": "card", "title": "Order 12"})
            assert r.avaturn.messages() == [
                {
                    "type": "sdk.message.send",
                    "data": {
                        "type": "django_avaturn.message",
                        "data": {"kind": "card", "title": "Order 12"},
                    },
                }
            ]

    run(test)


def test_audio_deltas_without_ids_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        async with Running() as r:
            bad: dict[str, Any] = audio_delta("r1", "i1", pcm(20))
            del bad["item_id"]
            await r.realtime.push(bad)
            assert r.avaturn.sent == []

    with caplog.at_level(logging.WARNING):
        run(test)
    assert "audio delta without audio or ids" in caplog.text


def test_say_after_the_end_is_a_no_op() -> None:
    async def test() -> None:
        realtime = MemoryRealtime()
        bridge = Bridge(MemoryAvaturn(), realtime)
        await bridge.stop()
        await bridge.run()
        await bridge.say("Anyone there?")
        await bridge.page_message({"still": "here"}, respond=True)
        assert realtime.sent == []

    run(test)
