"""connect_realtime through the openai SDK against a real loopback WebSocket server.

The server (the ``websockets`` package, on this test's loop) records the upgrade and
every client event; it stands in for OpenAI until the shipped fake replaces it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from django_avaturn.engine.bridge import Bridge, EndCause
from django_avaturn.engine.realtime import (
    CLOSE_WAIT,
    _client,
    _direct,
    _DirectSocket,
    connect_realtime,
    realtime_base_url,
)
from django_avaturn.exceptions import NotConfigured
from tests.engine_helpers import MemoryAvaturn, audio_delta, pcm, response_done
from tests.helpers import KEYS, run_coroutine

OPENAI_KEY = KEYS[1]
TOOL = {
    "type": "function",
    "name": "count_orders",
    "description": "Count the user's orders.",
    "parameters": {"type": "object", "properties": {}},
}


class Loopback:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.received: list[dict[str, Any]] = []
        self.got = asyncio.Condition()
        self.script: list[dict[str, Any]] = []
        self.close_code = 1000

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        self.headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        await ws.send(json.dumps({"type": "session.created", "session": {}}))
        async for message in ws:
            assert isinstance(message, str)  # OpenAI reads JSON text frames
            event = json.loads(message)
            async with self.got:
                self.received.append(event)
                self.got.notify_all()
            if event["type"] == "input_audio_buffer.append" and self.script:
                for item in self.script:
                    await ws.send(json.dumps(item))
                await ws.close(self.close_code, "done")
                return

    async def wait_for(self, count: int) -> None:
        async with self.got:
            await asyncio.wait_for(self.got.wait_for(lambda: len(self.received) >= count), 5)


def run_with_server(test: Any) -> None:
    async def main() -> None:
        loopback = Loopback()
        async with serve(loopback.handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(test(loopback, f"ws://127.0.0.1:{port}/v1"), 15)

    run_coroutine(main())


def test_connect_sends_one_session_update_and_the_key_stays_out_of_logs(
    avaturn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    session_config = {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Be brief.",
        "audio": {"output": {"voice": "marin", "format": {"type": "audio/pcmu"}}},
    }

    async def test(loopback: Loopback, url: str) -> None:
        connection = await connect_realtime(
            model="gpt-realtime", session_config=session_config, tools=[TOOL], websocket_url=url
        )
        try:
            await loopback.wait_for(1)
        finally:
            await connection.close()
        assert loopback.paths == ["/v1/realtime?model=gpt-realtime"]
        assert loopback.headers[0]["authorization"] == f"Bearer {OPENAI_KEY}"
        assert loopback.received == [
            {
                "type": "session.update",
                "event_id": "django_avaturn_session_update",
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime",
                    "instructions": "Be brief.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {"type": "server_vad"},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                        },
                        # The site's voice kept, its format replaced: nothing is resampled.
                        "output": {
                            "voice": "marin",
                            "format": {"type": "audio/pcm", "rate": 24000},
                        },
                    },
                    "tools": [TOOL],
                    "tool_choice": "auto",
                },
            }
        ]
        # The caller's config is not changed.
        assert "input" not in session_config["audio"]

    with caplog.at_level(logging.DEBUG):
        run_with_server(test)
    # The site's side only: the stand-in server (playing OpenAI) logs what it received.
    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any(r.name.startswith("openai") for r in ours)  # the SDK logged its connect
    assert not [r for r in ours if OPENAI_KEY in r.getMessage()]


def test_conversations_share_a_client_until_the_key_changes(avaturn: Any) -> None:
    """The SDK client is made once per key and address; a rotated key is used at once."""
    rotated = "sk-test-openai-rotated-9876543210"

    async def test(loopback: Loopback, url: str) -> None:
        for key in (OPENAI_KEY, OPENAI_KEY, rotated):
            avaturn(OPENAI_API_KEY=key)
            connection = await connect_realtime(
                model="gpt-realtime", session_config={}, tools=[], websocket_url=url
            )
            await connection.close()
        assert [h["authorization"] for h in loopback.headers] == [
            f"Bearer {OPENAI_KEY}",
            f"Bearer {OPENAI_KEY}",
            f"Bearer {rotated}",
        ]
        assert _client(OPENAI_KEY, url) is _client(OPENAI_KEY, url)
        assert _client(rotated, url) is not _client(OPENAI_KEY, url)

    run_with_server(test)


def test_without_its_own_url_the_socket_goes_where_openai_base_url_points(avaturn: Any) -> None:
    """The HTTP calls moved (a proxy, the loopback fake): the Realtime socket follows them."""

    async def test(loopback: Loopback, url: str) -> None:
        avaturn(OPENAI_BASE_URL=url.replace("ws://", "http://"))
        connection = await connect_realtime(
            model="m", session_config={}, tools=[], websocket_url=None
        )
        try:
            await loopback.wait_for(1)
        finally:
            await connection.close()
        assert loopback.received[0]["type"] == "session.update"

    run_with_server(test)
    avaturn(OPENAI_BASE_URL="https://proxy.example.com/v1")
    assert realtime_base_url() == "wss://proxy.example.com/v1"
    avaturn(OPENAI_BASE_URL=None)
    assert realtime_base_url() is None


def test_without_transcripts_no_transcription_is_asked_for(avaturn: Any) -> None:
    avaturn(TRANSCRIPTS_ENABLED=False)

    async def test(loopback: Loopback, url: str) -> None:
        connection = await connect_realtime(
            model="m", session_config={}, tools=[], websocket_url=url
        )
        await loopback.wait_for(1)
        await connection.close()
        session = loopback.received[0]["session"]
        assert "transcription" not in session["audio"]["input"]
        assert "tools" not in session

    run_with_server(test)


def test_no_key_is_a_configuration_error(avaturn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    avaturn(OPENAI_API_KEY=None)
    with pytest.raises(NotConfigured):
        run_coroutine(
            connect_realtime(model="m", session_config={}, tools=[], websocket_url="ws://x")
        )


def test_the_bridge_runs_over_the_sdk_connection_until_openai_closes(avaturn: Any) -> None:
    async def test(loopback: Loopback, url: str) -> None:
        loopback.script = [
            audio_delta("r1", "i1", pcm(20, 7)),
            response_done("r1"),
        ]
        connection = await connect_realtime(
            model="m", session_config={}, tools=[], websocket_url=url
        )
        avaturn_socket = MemoryAvaturn()
        bridge = Bridge(avaturn_socket, connection)
        task = asyncio.get_running_loop().create_task(bridge.run())
        await bridge.feed_audio(pcm(20, 3))
        assert await asyncio.wait_for(task, 5) == EndCause.OPENAI_CLOSED
        assert "code 1000: done" in bridge.end_detail
        append = loopback.received[1]
        assert append["type"] == "input_audio_buffer.append"
        assert base64.b64decode(append["audio"]) == pcm(20, 3)
        assert avaturn_socket.audio() == pcm(20, 7)
        assert avaturn_socket.types() == [
            "avatar.speech.segment.create",
            "avatar.speech.segment.close",
        ]

    run_with_server(test)


def test_a_scripted_conversation_with_the_shipped_fake(avaturn: Any) -> None:
    """h-fakes' FakeRealtime: a tool call, a barge-in, an advisory error, an abnormal close."""
    from django_avaturn.testing.realtime import (
        AdvisoryError,
        BargeIn,
        CallTool,
        Close,
        FakeRealtime,
        Speak,
    )
    from tests.engine_helpers import SegmentChecker

    script = [
        Speak("Hello there."),
        CallTool("count_orders", '{"status": "open"}'),
        BargeIn(),
        AdvisoryError(),
        Close(code=1011, reason="server error"),
    ]
    calls: list[tuple[str, str]] = []

    async def run_tool(call_id: str, name: str, arguments: str) -> str:
        calls.append((name, arguments))
        return '{"count": 2}'

    with FakeRealtime(script=script) as fake:
        avaturn(OPENAI_API_KEY=fake.api_key)

        async def main() -> tuple[EndCause, str, MemoryAvaturn]:
            connection = await connect_realtime(
                model="gpt-realtime",
                session_config={},
                tools=[TOOL],
                websocket_url=fake.websocket_base_url,
            )
            socket = MemoryAvaturn()
            bridge = Bridge(socket, connection, run_tool=run_tool)
            task = asyncio.get_running_loop().create_task(bridge.run())

            async def microphone() -> None:
                while not task.done():
                    await bridge.feed_audio(pcm(20))
                    await asyncio.sleep(0.005)

            mic = asyncio.get_running_loop().create_task(microphone())
            cause = await asyncio.wait_for(task, 20)
            await mic
            return cause, bridge.end_detail, socket

        cause, detail, socket = run_coroutine(main())
        assert fake.wait_until(lambda: fake.open_connections == 0)
        record = fake.connections[0]

    assert cause == EndCause.OPENAI_FAILED
    assert "code 1011" in detail
    assert calls == [("count_orders", '{"status": "open"}')]
    assert record.function_call_outputs[0]["output"] == '{"count": 2}'
    # The barge-in: interrupted, truncated within what was generated (the fake refuses
    # anything past it), cancelled.
    assert "avatar.speech.interrupt" in socket.types()
    # Without playback reports, earlier answers may still be queued at Avaturn: each
    # unheard item is cut, the interrupted one last; none past what it generated.
    assert record.truncates
    assert all(t["content_index"] == 0 for t in record.truncates)
    truncation_errors = [e for e in record.errors_sent if e.get("code") != "server_error"]
    assert truncation_errors == []
    assert "response.cancel" in record.event_types()
    assert SegmentChecker().check(socket.sent) == []
    assert len(record.session_updates) == 1


def test_events_go_through_the_sdk_connections_own_websocket(
    avaturn: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not through the SDK's send queue and receive wrapper, which cost microseconds an
    event; the SDK still closes the connection. (Its classes differ between the SDK's
    versions: what its connection's class has is patched, wherever it is defined.)"""

    def not_per_event(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an event went through the SDK's own method")

    async def test(loopback: Loopback, url: str) -> None:
        connection = await connect_realtime(
            model="m", session_config={}, tools=[], websocket_url=url
        )
        assert isinstance(connection, _DirectSocket)
        sdk_class = type(connection._connection)
        monkeypatch.setattr(sdk_class, "send_raw", not_per_event)
        monkeypatch.setattr(sdk_class, "recv_bytes", not_per_event)
        closed = []
        sdk_close = sdk_class.close

        async def close(self: Any, **kwargs: Any) -> None:
            closed.append(kwargs)
            await sdk_close(self, **kwargs)

        monkeypatch.setattr(sdk_class, "close", close)
        try:
            assert json.loads(await connection.recv_bytes())["type"] == "session.created"
            await connection.send_raw('{"type":"response.create"}')
            await loopback.wait_for(2)
        finally:
            await connection.close(code=1000, reason="bye")
        assert loopback.received[1] == {"type": "response.create"}
        assert closed == [{"code": 1000, "reason": "bye"}]

    run_with_server(test)


def test_a_connection_that_may_reconnect_or_holds_no_websocket_is_used_as_it_is() -> None:
    class Sdk:
        _connection = None
        _make_ws = None

    assert _direct(Sdk()).__class__ is Sdk
    reconnecting = Sdk()
    reconnecting._make_ws = object()  # type: ignore[assignment]
    reconnecting._connection = object.__new__(ClientConnection)  # type: ignore[assignment]
    assert _direct(reconnecting) is reconnecting
    plain = Sdk()
    plain._connection = object.__new__(ClientConnection)  # type: ignore[assignment]
    assert isinstance(_direct(plain), _DirectSocket)


@pytest.mark.parametrize("how", ["waited for", "cancelled"])
def test_a_close_that_openai_cannot_take_drops_the_connection(avaturn: Any, how: str) -> None:
    """OpenAI stopped reading: the close frame waits behind the unsent audio, and
    ``websockets`` would wait for it until its keepalive gives up. The close gives up
    after ``CLOSE_WAIT`` (or when cancelled) and drops the connection."""

    async def main() -> None:
        stalled = asyncio.Event()
        finished = asyncio.Event()

        async def handler(ws: ServerConnection) -> None:
            ws.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
            )
            ws.transport.pause_reading()
            stalled.set()
            await finished.wait()
            ws.transport.abort()  # it would read the backlog, then close: seconds

        async with serve(handler, "127.0.0.1", 0) as server:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
            connection = await connect_realtime(
                model="m", session_config={}, tools=[], websocket_url=url
            )
            assert isinstance(connection, _DirectSocket)
            try:
                await stalled.wait()
                sent = [0]
                sending = asyncio.ensure_future(_send_until_blocked(connection, sent))
                await _backed_up(sent)

                started = asyncio.get_running_loop().time()
                closing = asyncio.ensure_future(connection.close())
                if how == "cancelled":
                    await asyncio.sleep(0.1)
                    closing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(closing, CLOSE_WAIT + 10)
                elapsed = asyncio.get_running_loop().time() - started
                # Loose upper bounds (a loaded machine): websockets alone would wait for
                # its keepalive, about 40 s.
                if how == "cancelled":
                    assert elapsed < CLOSE_WAIT
                else:
                    assert CLOSE_WAIT - 0.1 < elapsed < CLOSE_WAIT + 10
                assert connection._websocket.transport.is_closing()
                # The send stuck behind the close ends with the connection.
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(sending, 2)
            finally:
                finished.set()

    run_coroutine(main())


async def _send_until_blocked(connection: _DirectSocket, sent: list[int]) -> None:
    # Noise: the sockets negotiate compression, which would shrink a tone to nothing.
    while True:
        audio = base64.b64encode(os.urandom(3072)).decode("ascii")
        await connection.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        sent[0] += 1


async def _backed_up(sent: list[int]) -> None:
    """Until the sends counted in ``sent`` stop going out (a send waits on the socket)."""
    for _ in range(100):
        before = sent[0]
        await asyncio.sleep(0.2)
        if sent[0] == before:
            return
    raise AssertionError("the sends never backed up")
