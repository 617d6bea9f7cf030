"""`FakeRealtime`, driven over real sockets by the real ``openai`` SDK realtime client."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from django_avaturn.testing import (
    AdvisoryError,
    BargeIn,
    CallTool,
    Close,
    FakeRealtime,
    Script,
    Speak,
    rundemo_script,
)
from django_avaturn.testing.realtime import BYTES_PER_MS, pcm_tone
from tests.helpers import run_coroutine

T = TypeVar("T")
SILENCE_20MS = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()}
)


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, 10)

    return run_coroutine(bounded())


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeRealtime]:
    default = Script([Speak("Hello there.", after_audio_ms=100)])
    script = getattr(request, "param", default)
    with FakeRealtime(script) as running:
        yield running


@asynccontextmanager
async def realtime(fake: FakeRealtime, key: str | None = None) -> AsyncIterator[Any]:
    client = AsyncOpenAI(api_key=key or fake.api_key, websocket_base_url=fake.websocket_base_url)
    async with client.realtime.connect(model="gpt-realtime") as connection:
        yield connection
    await client.close()


async def send_audio(connection: AsyncRealtimeConnection, ms: int) -> None:
    for _ in range(ms // 20):
        await connection.send_raw(SILENCE_20MS)


async def events_until(
    connection: AsyncRealtimeConnection,
    last: str | Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 5,
) -> list[dict[str, Any]]:
    done = (lambda event: event["type"] == last) if isinstance(last, str) else last
    events: list[dict[str, Any]] = []
    while True:
        event = json.loads(await asyncio.wait_for(connection.recv_bytes(), timeout))
        events.append(event)
        if done(event):
            return events


def types(events: list[dict[str, Any]]) -> list[str]:
    """Event types with runs of audio deltas collapsed to one."""
    found: list[str] = []
    for event in events:
        if event["type"] == "response.output_audio.delta" and found and found[-1] == event["type"]:
            continue
        found.append(event["type"])
    return found


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(event["delta"])
        for event in events
        if event["type"] == "response.output_audio.delta"
    )


def with_script(script: Script) -> Any:
    return pytest.mark.parametrize("fake", [script], indirect=True, ids=["script"])


SPOKEN_TURN = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.done",
]


def test_the_sdk_connects_to_base_realtime_with_the_model_and_the_key(fake: FakeRealtime) -> None:
    async def go() -> list[dict[str, Any]]:
        async with realtime(fake) as connection:
            first = await events_until(connection, "session.created")
            update = {"type": "realtime", "instructions": "Be brief."}
            await connection.send_raw(json.dumps({"type": "session.update", "session": update}))
            return first + await events_until(connection, "session.updated")

    events = run(go())
    assert [event["type"] for event in events] == ["session.created", "session.updated"]
    assert events[0]["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert events[1]["session"]["instructions"] == "Be brief."
    (record,) = fake.connections
    assert record.path.startswith("/v1/realtime?") and record.model == "gpt-realtime"
    assert record.headers["authorization"] == f"Bearer {fake.api_key}"
    assert record.session_updates == [{"type": "realtime", "instructions": "Be brief."}]
    assert fake.wait_until(lambda: fake.open_connections == 0)
    assert fake.connections[0].closed_by == "client"


def test_another_key_is_refused_before_the_upgrade(fake: FakeRealtime) -> None:
    async def go() -> None:
        async with realtime(fake, key="sk-someone-else"):
            pass  # pragma: no cover - never reached

    with pytest.raises(InvalidStatus) as refused:
        run(go())
    assert refused.value.response.status_code == 401
    assert fake.connections == []
    assert fake.refused[0]["authorization"] == "Bearer sk-someone-else"


def test_a_spoken_turn_waits_for_enough_audio_then_answers_with_deterministic_pcm(
    fake: FakeRealtime,
) -> None:
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with realtime(fake) as connection:
            await events_until(connection, "session.created")
            await send_audio(connection, 80)  # the turn needs 100 ms
            with pytest.raises(asyncio.TimeoutError):
                await events_until(connection, lambda event: True, timeout=0.3)
            await send_audio(connection, 20)
            turn = await events_until(connection, "response.done")
            return turn, []

    turn, _ = run(go())
    assert types(turn) == SPOKEN_TURN
    transcription = turn[3]
    assert transcription["transcript"] == "Hello?"
    assert transcription["item_id"] == turn[0]["item_id"]
    assert audio_of(turn) == pcm_tone(600)
    assert len(audio_of(turn)) == 600 * BYTES_PER_MS
    assert turn[-2]["transcript"] == "Hello there."
    assert turn[-1]["response"]["status"] == "completed"
    record = fake.connections[0]
    assert record.append_count == 5 and record.audio_bytes_appended == 5 * 960
    assert record.events == []  # appends are counted, not kept


@with_script(Script([CallTool("lookup_order", '{"order": 7}', call_id="call_1", after_audio_ms=0)]))
def test_a_tool_call_waits_for_its_output_and_a_response_create(fake: FakeRealtime) -> None:
    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with realtime(fake) as connection:
            call = await events_until(connection, "response.done")
            output = {"type": "function_call_output", "call_id": "call_1", "output": '"shipped"'}
            await connection.send_raw(
                json.dumps({"type": "conversation.item.create", "item": output})
            )
            with pytest.raises(asyncio.TimeoutError):  # no response.create yet
                await events_until(connection, "response.created", timeout=0.3)
            await connection.send_raw(json.dumps({"type": "response.create"}))
            return call, await events_until(connection, "response.done")

    call, answer = run(go())
    arguments = next(e for e in call if e["type"] == "response.function_call_arguments.done")
    assert (arguments["call_id"], arguments["name"], arguments["arguments"]) == (
        "call_1",
        "lookup_order",
        '{"order": 7}',
    )
    assert call[-1]["response"]["output"][0]["type"] == "function_call"
    transcript = next(e for e in answer if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == 'Here is what I found: "shipped"'
    assert fake.connections[0].function_call_outputs == [
        {"type": "function_call_output", "call_id": "call_1", "output": '"shipped"'}
    ]


@with_script(Script([BargeIn(after_audio_ms=0, interrupt_after_ms=300, late_audio_ms=100)]))
def test_barge_in_then_cancel_and_truncate_as_openai_answers_them(fake: FakeRealtime) -> None:
    async def go() -> list[dict[str, Any]]:
        async with realtime(fake) as connection:
            events = await events_until(connection, "response.created")
            events += await events_until(connection, "input_audio_buffer.speech_started")
            item_id = events[-2]["item_id"]
            await connection.send_raw(json.dumps({"type": "response.cancel"}))
            events += await events_until(connection, "response.done")
            truncate = {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
            }
            await connection.send_raw(json.dumps({**truncate, "audio_end_ms": 900}))
            events += await events_until(connection, "error")
            await connection.send_raw(json.dumps({**truncate, "audio_end_ms": 250}))
            events += await events_until(connection, "conversation.item.truncated")
            await connection.send_raw(json.dumps({"type": "response.cancel"}))
            return events + await events_until(connection, "error")

    events = run(go())
    started = [i for i, e in enumerate(events) if e["type"] == "input_audio_buffer.speech_started"][
        1
    ]
    assert len(audio_of(events[:started])) == 300 * BYTES_PER_MS
    assert len(audio_of(events)) == 400 * BYTES_PER_MS  # the late 100 ms, then cancelled
    done = next(e for e in events if e["type"] == "response.done")
    assert done["response"]["status"] == "cancelled"
    interjection = [
        e["transcript"]
        for e in events
        if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]
    assert interjection == ["Tell me a story.", "Wait, stop."]
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert errors[0]["message"] == "Audio content of 400ms is already shorter than 900ms"
    assert (errors[0]["type"], errors[0]["param"]) == ("invalid_request_error", "audio_end_ms")
    truncated = next(e for e in events if e["type"] == "conversation.item.truncated")
    assert truncated["audio_end_ms"] == 250
    assert errors[1]["code"] == "response_cancel_not_active"
    record = fake.connections[0]
    assert [t["audio_end_ms"] for t in record.truncates] == [900, 250]
    assert record.event_types().count("response.cancel") == 2


@with_script(
    Script(
        [
            AdvisoryError("Rate limited, briefly.", code="rate_limit"),
            Speak("Still here.", after_audio_ms=0),
        ]
    )
)
def test_an_advisory_error_leaves_the_session_going(fake: FakeRealtime) -> None:
    async def go() -> list[dict[str, Any]]:
        async with realtime(fake) as connection:
            return await events_until(connection, "response.done")

    events = run(go())
    assert events[1]["type"] == "error"
    assert events[1]["error"]["message"] == "Rate limited, briefly."
    assert events[-2]["transcript"] == "Still here."


@with_script(Script([Close(after_audio_ms=40)]))
def test_an_abrupt_close_sends_no_close_frame(fake: FakeRealtime) -> None:
    async def go() -> ConnectionClosed:
        async with realtime(fake) as connection:
            await events_until(connection, "session.created")
            await send_audio(connection, 40)
            with pytest.raises(ConnectionClosed) as closed:
                await events_until(connection, lambda event: False)
            return closed.value

    closed = run(go())
    assert closed.rcvd is None
    assert fake.wait_until(lambda: fake.open_connections == 0)
    assert fake.connections[0].closed_by == "abort"


@with_script(Script([Close(code=1011, reason="internal error")]))
def test_a_close_with_1011(fake: FakeRealtime) -> None:
    async def go() -> ConnectionClosed:
        async with realtime(fake) as connection:
            with pytest.raises(ConnectionClosed) as closed:
                await events_until(connection, lambda event: False)
            return closed.value

    closed = run(go())
    assert closed.rcvd is not None and closed.rcvd.code == 1011
    assert fake.wait_until(lambda: fake.open_connections == 0)
    assert fake.connections[0].closed_by == "server"


@with_script(Script([]))
def test_response_create_outside_the_script_speaks_its_instructions(fake: FakeRealtime) -> None:
    async def go() -> list[dict[str, Any]]:
        async with realtime(fake) as connection:
            await events_until(connection, "session.created")
            create = {"type": "response.create", "response": {"instructions": "One moment."}}
            await connection.send_raw(json.dumps(create))
            return await events_until(connection, "response.done")

    events = run(go())
    said = [e["transcript"] for e in events if e["type"] == "response.output_audio_transcript.done"]
    assert said == ["One moment."]


@with_script(Script([Speak("A long answer.", after_audio_ms=0, audio_ms=20000, chunk_ms=20)]))
def test_response_create_during_a_response_is_refused(fake: FakeRealtime) -> None:
    async def go() -> list[dict[str, Any]]:
        async with realtime(fake) as connection:
            await events_until(connection, "response.created")
            await connection.send_raw(json.dumps({"type": "response.create"}))
            return await events_until(connection, "response.done")

    events = run(go())
    (error,) = [e["error"] for e in events if e["type"] == "error"]
    assert error["code"] == "conversation_already_has_active_response"
    assert events[-1]["response"]["status"] == "completed"


def test_the_rundemo_script_calls_the_tool_once_then_answers_forever() -> None:
    async def go(fake: FakeRealtime) -> list[dict[str, Any]]:
        async with realtime(fake) as connection:
            transcripts: list[dict[str, Any]] = []
            for _ in range(5):
                await send_audio(connection, 20)
                events = await events_until(connection, "response.done")
                transcripts += events
                for event in events:
                    if event["type"] == "response.function_call_arguments.done":
                        item = {
                            "type": "function_call_output",
                            "call_id": event["call_id"],
                            "output": "Ada",
                        }
                        await connection.send_raw(
                            json.dumps({"type": "conversation.item.create", "item": item})
                        )
                        await connection.send_raw(json.dumps({"type": "response.create"}))
            return transcripts

    with FakeRealtime(rundemo_script("whoami", after_audio_ms=20)) as fake:
        events = run(go(fake))
    calls = [e["name"] for e in events if e["type"] == "response.function_call_arguments.done"]
    said = [e["transcript"] for e in events if e["type"] == "response.output_audio_transcript.done"]
    assert calls == ["whoami"]
    assert "You are: Ada" in said
    assert said[-1] == said[-2] == "I hear you. This is a scripted answer."


def test_stop_closes_open_connections_and_counts_none_left() -> None:
    fake = FakeRealtime(Script([])).start()

    async def go() -> None:
        async with realtime(fake) as connection:
            await events_until(connection, "session.created")
            assert fake.open_connections == 1
            await asyncio.to_thread(fake.stop)
            with pytest.raises(ConnectionClosed):
                await events_until(connection, lambda event: False)

    run(go())
    assert fake.open_connections == 0
    assert fake.connections[0].closed_by == "server"
    assert not fake.running


def test_only_loopback() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        FakeRealtime(host="0.0.0.0")
