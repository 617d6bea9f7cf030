"""`AvaturnEngineClient` against a small ``websockets`` engine server in each test."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import requests
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.http11 import Request, Response

from django_avaturn.testing import AvaturnEngineClient, FakeUpstream
from django_avaturn.testing.engine_client import microphone_frame
from tests.helpers import run_coroutine

T = TypeVar("T")
Script = Callable[["Engine", ServerConnection], Awaitable[None]]


def run(coroutine: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, 15)

    return run_coroutine(bounded())


class Engine:
    """What the engine side received: frames, JSON messages, the upgrade's headers."""

    def __init__(self, script: Script | None = None, refuse: int | None = None) -> None:
        self.script = script
        self.refuse = refuse
        self.headers: dict[str, str] = {}
        self.path = ""
        self.frames: list[bytes] = []
        self.messages: list[dict[str, Any]] = []
        self.closed_with: tuple[int, str] | None = None
        self.changed = asyncio.Event()

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        self.headers = {k.lower(): v for k, v in request.headers.raw_items()}
        self.path = request.path
        if self.refuse is not None:
            return connection.respond(self.refuse, "refused\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        reader = asyncio.ensure_future(self.read(ws))
        if self.script is not None:
            await self.script(self, ws)
        await reader

    async def read(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    self.frames.append(message)
                else:
                    self.messages.append(json.loads(message))
                self.changed.set()
        except ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        if received is not None:
            self.closed_with = (received.code, received.reason)
        self.changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()

    async def message(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        await self.until(lambda: len(self.of(kind)) >= count)
        return self.of(kind)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.messages if message.get("type") == kind]


@asynccontextmanager
async def engine_at(engine: Engine) -> AsyncIterator[str]:
    async with serve(engine.handle, "127.0.0.1", 0, process_request=engine.check) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/avaturn/engine/tok123/"


async def send(ws: ServerConnection, kind: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": kind, **fields}))


def test_connects_with_the_url_and_headers_and_streams_20ms_frames() -> None:
    engine = Engine()

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = AvaturnEngineClient(url, {"X-Avaturn-Engine-Secret": "s3cret"})
            async with client:
                await engine.until(lambda: len(engine.frames) >= 5)
            await engine.until(lambda: engine.closed_with is not None)
        return client

    client = run(go())
    assert engine.path == "/avaturn/engine/tok123/"
    assert engine.headers["x-avaturn-engine-secret"] == "s3cret"
    assert {len(frame) for frame in engine.frames} == {960}  # 20 ms of PCM16 at 24 kHz
    assert set(b"".join(engine.frames)) == {0}
    assert engine.closed_with == (1000, "visitor gone")
    assert (client.closed_by, client.closed) == ("client", True)
    assert client.audio_bytes_sent == 960 * len(engine.frames)


def test_a_tone_microphone_sends_the_deterministic_tone_at_16_khz() -> None:
    engine = Engine()

    async def go() -> None:
        async with engine_at(engine) as url:
            options: dict[str, Any] = {"microphone": "tone", "sample_rate": 16000, "paced": False}
            async with AvaturnEngineClient(url, **options):
                await engine.until(lambda: len(engine.frames) >= 3)

    run(go())
    assert engine.frames[:3] == [microphone_frame("tone", i, sample_rate=16000) for i in range(3)]
    assert len(engine.frames[0]) == 640 and set(engine.frames[0]) != {0}


def test_segments_are_acknowledged_and_their_playback_reported_in_real_time() -> None:
    async def script(engine: Engine, ws: ServerConnection) -> None:
        await send(ws, "avatar.speech.segment.create", segment_uid="u1")
        for _ in range(10):  # 200 ms
            await ws.send(bytes(960))
        await send(ws, "avatar.speech.segment.close", segment_uid="u1")
        await engine.message("avatar.speech.segment.playback.ended")
        await ws.close()

    engine = Engine(script)

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = await AvaturnEngineClient(url, microphone=None).aconnect()
            await client.await_closed()
        return client

    client = run(go())
    kinds = [message["type"] for message in engine.messages]
    assert kinds == [
        "avatar.speech.segment.created",
        "avatar.speech.segment.closed",
        "avatar.speech.segment.playback.started",
        "avatar.speech.segment.playback.ended",
    ]
    created, _, started, ended = engine.messages
    assert created == {
        "type": "avatar.speech.segment.created",
        "segment_id": "seg_1",
        "segment_uid": "u1",
    }
    assert ended["timestamp"] - started["timestamp"] >= 0.2  # played as if in real time
    (segment,) = client.segments
    assert (segment.bytes, segment.audio_ms, segment.open) == (9600, 200, False)
    assert client.violations == []
    assert (client.closed_by, client.close_code) == ("engine", 1000)


def test_an_interrupt_reports_what_was_played_and_discards_the_rest() -> None:
    async def script(engine: Engine, ws: ServerConnection) -> None:
        await send(ws, "avatar.speech.interrupt")  # nothing playing: nothing reported
        await send(ws, "avatar.speech.segment.create", segment_uid="u1")
        for _ in range(100):  # 2 s
            await ws.send(bytes(960))
        await engine.message("avatar.speech.segment.playback.started")
        await asyncio.sleep(0.1)
        await send(ws, "avatar.speech.interrupt")
        await ws.send(bytes(960))  # late audio of the interrupted segment
        await send(ws, "avatar.speech.segment.close", segment_uid="u1")
        await engine.message("avatar.speech.segment.closed")
        await ws.close()

    engine = Engine(script)

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = await AvaturnEngineClient(url, microphone=None).aconnect()
            await client.await_closed()
        return client

    client = run(go())
    (interrupted,) = engine.of("avatar.speech.segment.playback.interrupted")
    assert interrupted["segment_uid"] == "u1"
    assert 0.1 <= interrupted["played_duration"] < 2.0
    assert engine.of("avatar.speech.segment.playback.ended") == []
    (segment,) = client.segments
    assert segment.bytes == 96000 and segment.bytes_after_interrupt == 960
    assert segment.played_duration == interrupted["played_duration"]
    assert client.interrupts == 2 and client.violations == []


def test_protocol_violations_are_recorded_and_answered_with_avaturn_errors() -> None:
    async def script(engine: Engine, ws: ServerConnection) -> None:
        await ws.send(bytes(480))  # audio before any segment
        await send(ws, "avatar.speech.segment.create", segment_uid="a")
        await send(ws, "avatar.speech.segment.create", segment_uid="b")  # one at a time
        await send(ws, "avatar.speech.segment.close", segment_uid="b")
        await send(ws, "avatar.speech.nonsense")
        await ws.send("not json")
        await send(ws, "sdk.message.send", data={"type": "django_avaturn.message", "n": 1})
        await engine.message("error", 4)
        await ws.close(4000, "done")

    engine = Engine(script)

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = await AvaturnEngineClient(url, microphone=None).aconnect()
            await client.await_closed()
        return client

    client = run(go())
    assert client.violations == [
        "audio outside a segment (480 bytes)",
        "segment 'b' created while 'a' is open",
        "segment.close for 'b', which is not the open segment",
        "unknown message type 'avatar.speech.nonsense'",
        "a text frame that is not JSON",
    ]
    assert [e["subtype"] for e in engine.of("error")] == [
        "avatar.speech.segment.error",
        "avatar.speech.segment.error",
        "message.type.error",
        "json.parsing.error",
    ]
    assert client.browser_messages == [{"type": "django_avaturn.message", "n": 1}]
    assert (client.closed_by, client.close_code, client.close_reason) == ("engine", 4000, "done")


def test_a_dropped_connection_is_reported_as_abnormal() -> None:
    async def script(engine: Engine, ws: ServerConnection) -> None:
        ws.transport.abort()

    engine = Engine(script)
    closed: list[str | None] = []

    async def go() -> None:
        async with engine_at(engine) as url:
            client = AvaturnEngineClient(url, on_close=lambda c: closed.append(c.closed_by))
            await client.aconnect()
            await client.await_closed()

    run(go())
    assert closed == ["abnormal"]


def test_a_close_the_engine_sent_first_is_the_engines_though_the_client_then_closes() -> None:
    """The fake closes the client when the session ends (its DELETE), which may come a moment
    after the engine's own close frame arrived: the close is still the engine's."""

    async def script(engine: Engine, ws: ServerConnection) -> None:
        # The close frame is sent, and the server reads nothing for a while: the
        # client has it, but its connection is not closed yet.
        ws.transport.pause_reading()
        ws.protocol.send_close(4011, "openai failed")
        ws.transport.write(b"".join(ws.protocol.data_to_send()))
        await asyncio.sleep(0.5)
        ws.transport.resume_reading()

    engine = Engine(script)

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = AvaturnEngineClient(url)
            await client.aconnect()
            while client._ws is None or client._ws.protocol.close_rcvd is None:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            await client.aclose()
            return client

    client = run(go())
    assert (client.closed_by, client.close_code) == ("engine", 4011)


def test_a_refused_upgrade_raises_and_is_reported() -> None:
    engine = Engine(refuse=403)
    closed: list[AvaturnEngineClient] = []

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = AvaturnEngineClient(url, on_close=closed.append)
            with pytest.raises(InvalidStatus):
                await client.aconnect()
        return client

    client = run(go())
    assert closed == [client]
    assert (client.refused_status, client.closed_by, client.connected) == (403, "failed", False)


def test_the_sync_api_runs_the_client_in_its_own_thread() -> None:
    async def script(engine: Engine, ws: ServerConnection) -> None:
        await send(ws, "sdk.message.send", data={"type": "card"})

    engine = Engine(script)

    async def go() -> AvaturnEngineClient:
        async with engine_at(engine) as url:
            client = AvaturnEngineClient(url, microphone=None)

            def in_a_sync_test() -> None:
                with client:
                    assert client.wait_until(lambda: client.browser_messages == [{"type": "card"}])
                    client.send_audio(100)
                    client.send_json({"type": "sdk.message.receive", "data": {"hi": 1}})

            await asyncio.to_thread(in_a_sync_test)
            await engine.until(lambda: engine.closed_with is not None)
        return client

    client = run(go())
    assert [len(frame) for frame in engine.frames] == [960] * 5
    assert engine.of("sdk.message.receive") == [{"type": "sdk.message.receive", "data": {"hi": 1}}]
    assert client.closed_by == "client" and engine.closed_with == (1000, "visitor gone")


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="microphone"):
        AvaturnEngineClient("ws://127.0.0.1:1/", microphone="music")
    with pytest.raises(ValueError, match="sample_rate"):
        AvaturnEngineClient("ws://127.0.0.1:1/", sample_rate=44100)


# -- FakeUpstream connects the client itself ----------------------------------------


def create_external(fake: FakeUpstream, url: str, **engine: Any) -> str:
    body = {
        "avatar_id": "av_1",
        "conversation_engine": {
            "type": "external",
            "url": url,
            "headers": {"X-Avaturn-Engine-Secret": "per-session"},
            **engine,
        },
    }
    answer = requests.post(
        f"{fake.avaturn_url}/api/v1/sessions",
        json=body,
        headers={"Authorization": f"Bearer {fake.avaturn_api_key}"},
        timeout=5,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["session_id"])


def delete(fake: FakeUpstream, session_id: str) -> int:
    answer = requests.delete(
        f"{fake.avaturn_url}/api/v1/sessions/{session_id}",
        headers={"Authorization": f"Bearer {fake.avaturn_api_key}"},
        timeout=5,
    )
    return answer.status_code


def test_the_fake_upstream_connects_to_a_loopback_engine_and_delete_closes_it() -> None:
    engine = Engine()

    async def go() -> tuple[FakeUpstream, str]:
        async with engine_at(engine) as url:
            with FakeUpstream(engine_client_options={"microphone": "tone"}) as fake:
                audio = {"user": {"sample_rate": 16000}}
                session_id = await asyncio.to_thread(create_external, fake, url, audio=audio)
                await engine.until(lambda: len(engine.frames) >= 2)
                client = fake.engine_client(session_id)
                assert client is not None and client.connected
                assert fake.state()["sessions"][0]["engine_connection"]["connected"] is True
                assert await asyncio.to_thread(delete, fake, session_id) == 200
                await engine.until(lambda: engine.closed_with is not None)
                assert await asyncio.to_thread(client.wait_closed)
        return fake, session_id

    fake, session_id = run(go())
    assert engine.headers["x-avaturn-engine-secret"] == "per-session"
    assert engine.path == "/avaturn/engine/tok123/"
    assert len(engine.frames[0]) == 640  # 20 ms at the session's 16 kHz
    assert engine.closed_with == (1000, "visitor gone")
    client = fake.engine_clients[session_id]
    assert client.closed_by == "client"
    assert fake.live_session_ids() == set()


def test_the_engine_closing_its_socket_ends_the_fake_session() -> None:
    async def script(engine: Engine, ws: ServerConnection) -> None:
        await engine.until(lambda: len(engine.frames) >= 1)
        await ws.close(1011, "openai went away")

    engine = Engine(script)

    async def go() -> tuple[FakeUpstream, str]:
        async with engine_at(engine) as url:
            with FakeUpstream() as fake:
                session_id = await asyncio.to_thread(create_external, fake, url)
                await asyncio.to_thread(
                    fake.engine_clients[session_id].wait_until,
                    lambda: session_id not in fake.live_session_ids(),
                )
        return fake, session_id

    fake, session_id = run(go())
    assert fake.live_session_ids() == set()
    assert fake.sessions[session_id].ended_at is not None
    client = fake.engine_clients[session_id]
    assert (client.closed_by, client.close_code) == ("engine", 1011)


def test_a_refused_engine_socket_ends_the_fake_session() -> None:
    engine = Engine(refuse=403)

    async def go() -> tuple[FakeUpstream, str]:
        async with engine_at(engine) as url:
            with FakeUpstream() as fake:
                session_id = await asyncio.to_thread(create_external, fake, url)
                client = fake.engine_clients[session_id]
                await asyncio.to_thread(client.wait_until, lambda: client.closed)
                await asyncio.to_thread(
                    client.wait_until, lambda: session_id not in fake.live_session_ids()
                )
        return fake, session_id

    fake, session_id = run(go())
    client = fake.engine_clients[session_id]
    assert (client.closed_by, client.refused_status) == ("failed", 403)
    assert session_id not in fake.live_session_ids()


def test_the_engines_messages_reach_the_sessions_page_through_the_fake() -> None:
    """As Avaturn passes an engine's sdk.message.send on: the stand-in SDK's poll gets it."""
    card = {"type": "django_avaturn.message", "data": {"card": "Signed in as", "text": "ada"}}

    async def script(engine: Engine, ws: ServerConnection) -> None:
        await engine.until(lambda: len(engine.frames) >= 1)
        await send(ws, "sdk.message.send", data=card)
        await send(ws, "sdk.message.send", data={"no": "type"})  # the SDK would drop it

    engine = Engine(script)

    async def go() -> tuple[FakeUpstream, str, dict[str, Any]]:
        async with engine_at(engine) as url:
            with FakeUpstream() as fake:
                session_id = await asyncio.to_thread(create_external, fake, url)
                client = fake.engine_clients[session_id]
                await asyncio.to_thread(
                    client.wait_until, lambda: len(client.browser_messages) == 2
                )
                token = fake.sessions[session_id].token
                polled = await asyncio.to_thread(
                    requests.get,
                    f"{fake.url}/_sdk/v0/sessions/messages?after=0",
                    headers={"X-Session-Token": token},
                    timeout=5,
                )
                await asyncio.to_thread(delete, fake, session_id)
        return fake, session_id, polled.json()

    fake, session_id, polled = run(go())
    assert polled == {"messages": [card], "next": 1}
    assert fake.browser_messages(session_id) == [card]


def test_engines_beyond_loopback_are_not_connected_unless_asked() -> None:
    with FakeUpstream() as fake:
        session_id = create_external(fake, "wss://engine.example.com/avaturn/engine/t/")
        assert fake.engine_client(session_id) is None
        assert session_id in fake.live_session_ids()
    with FakeUpstream(connect_engines=False) as fake:
        session_id = create_external(fake, "ws://127.0.0.1:9/")
        assert fake.engine_clients == {}


def test_without_websockets_the_fake_leaves_a_loopback_engine_unconnected_and_says_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain install has no websockets: the create must not fail half done (the session
    registered, the handler crashed, the site's start an upstream error with its row held)."""
    monkeypatch.setitem(sys.modules, "websockets", None)  # import websockets raises
    with FakeUpstream() as fake, caplog.at_level(logging.WARNING, "django_avaturn.testing"):
        session_id = create_external(fake, "ws://127.0.0.1:9/avaturn/engine/t/")
        assert session_id in fake.live_session_ids()
        assert fake.engine_clients == {}
    assert "needs websockets (pip install 'django-avaturn[engine]')" in caplog.text
