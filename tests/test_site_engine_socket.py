"""The site engine's socket: the real ASGI route under Channels' communicator, real
rows, and a loopback OpenAI Realtime server. Every refusal of its authentication,
and every direction a conversation ends in."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import OperationalError, connection
from django.urls import path
from uvicorn.protocols.utils import ClientDisconnected
from websockets.exceptions import ConnectionClosed

from django_avaturn import services
from django_avaturn.conf import avaturn_settings
from django_avaturn.engine import layer, shutdown, tokens
from django_avaturn.engine.consumer import STOP_WAIT, AvaturnGone, _AvaturnSide, end_row
from django_avaturn.engine.routing import websocket_not_found, websocket_urlpatterns
from django_avaturn.exceptions import AvaturnError
from django_avaturn.models import EndReason, Session, SessionStatus, ToolCall, Transcript
from django_avaturn.sessions import transitions
from django_avaturn.sessions.plan import realtime_session_from_settings
from django_avaturn.testing.realtime import CallTool, Close, FakeRealtime, Script
from tests.channel_layers import HookedLayer
from tests.helpers import AvaturnOverrides, closed_port, live, run_coroutine
from tests.realtime_loopback import LoopbackRealtime

pytestmark = pytest.mark.django_db(transaction=True)

IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
PCM = b"\x01\x00" * 480  # 20 ms of PCM16 at 24 kHz
TIMEOUT = 5


@pytest.fixture(autouse=True)
def _forget_rows_left_running() -> Iterator[None]:
    """Whatever a test leaves in the process's registry of running rows (a row whose end
    failed, say) is forgotten after it: at the run's exit it would be ended against a
    database long gone, and the tests that find the registry empty would fail."""
    yield
    for pk in shutdown.left_running():
        shutdown.done(pk)


@pytest.fixture
def realtime() -> Iterator[LoopbackRealtime]:
    server = LoopbackRealtime().start()
    yield server
    server.stop()


@pytest.fixture
def engine(
    avaturn: AvaturnOverrides, settings: Any, realtime: LoopbackRealtime, upstream: Any
) -> Any:
    settings.CHANNEL_LAYERS = IN_MEMORY
    avaturn(
        ENGINE="site",
        SITE_ENGINE={
            "PUBLIC_URL": "wss://avatar.example.com",
            "OPENAI_WEBSOCKET_URL": realtime.url,
        },
    )
    return upstream


def site_row(user: Any, session_id: str = "sess-1", **fields: Any) -> tuple[Session, str, str]:
    """A site engine row and the token and secret its start gave Avaturn."""
    started_at = fields.pop("started_at", False)
    row = live(user, session_id, **{"engine": "site", **fields})
    if started_at is None:
        Session.objects.filter(pk=row.pk).update(started_at=None)
    credentials = tokens.mint(row.pk)
    Session.objects.filter(pk=row.pk).update(
        engine_secret_hash=credentials.secret_hash, engine_plan=settings_plan()
    )
    return row, credentials.token, credentials.secret


def settings_plan() -> dict[str, Any]:
    """The engine plan a start with no session hook leaves on its row."""
    return tokens.engine_plan(
        realtime_session_from_settings(), list(avaturn_settings.SITE_ENGINE["TOOLS"])
    )


def socket(token: str, secret: str | None) -> WebsocketCommunicator:
    headers = [] if secret is None else [(b"x-avaturn-engine-secret", secret.encode())]
    return WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/avaturn/engine/{token}/", headers=headers
    )


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_coroutine(test())


async def eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def row_of(pk: int) -> Session:
    return await sync_to_async(Session.objects.get)(pk=pk)


async def ended(pk: int, timeout: float = TIMEOUT) -> Session:
    deadline = time.monotonic() + timeout
    while True:
        row = await row_of(pk)
        if row.status in (SessionStatus.ENDED, SessionStatus.FAILED):
            return row
        assert time.monotonic() < deadline, f"row still {row.status}"
        await asyncio.sleep(0.02)


async def talking(token: str, secret: str, realtime: LoopbackRealtime) -> WebsocketCommunicator:
    """Avaturn's socket, accepted, with the engine's OpenAI socket open."""
    communicator = socket(token, secret)
    assert (await communicator.connect(TIMEOUT))[0] is True
    await eventually(lambda: realtime.open == 1)
    return communicator


async def closed_by_the_site(communicator: WebsocketCommunicator, realtime: Any) -> None:
    """The engine closed Avaturn's socket as for a site's end (1000), and OpenAI's."""
    assert (await closed_with(communicator))["code"] == 1000
    await eventually(lambda: realtime.open == 0)
    await left(communicator)


async def left(communicator: WebsocketCommunicator, code: int = 1000) -> None:
    """Avaturn closes its side; the consumer then returns of itself. (``disconnect``
    alone would not tell: once its timeout passes it cancels the consumer, quietly.)"""
    await communicator.disconnect(code=code, timeout=TIMEOUT)
    assert not communicator.future.cancelled(), "the consumer did not return"


async def closed_with(
    communicator: WebsocketCommunicator, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The close the engine sent Avaturn (skipping anything sent before it)."""
    while True:
        output = await communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            return output


# ---------------------------------------------------------------------- refusals


def _refused(communicator: WebsocketCommunicator) -> None:
    async def attempt() -> None:
        connected, code = await communicator.connect(TIMEOUT)
        assert (connected, code) == (False, 1008)

    run(attempt)


def _assert_logged_without(caplog: pytest.LogCaptureFixture, *credentials: str) -> None:
    assert "Refused a site engine socket" in caplog.text
    for credential in credentials:
        assert credential not in caplog.text


@pytest.mark.parametrize("route", ["/nope/", "/chat/nope/", "/avaturn/engine/", "/avaturn/x/y/"])
def test_a_path_no_route_takes_is_refused_before_accept(
    engine: Any, user: Any, realtime: LoopbackRealtime, route: str
) -> None:
    """``websocket_not_found`` last, after a site's own routes (a nested router among them)."""

    async def chat(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    site_routes = [path("room/", chat)]
    router = URLRouter(
        [path("chat/", URLRouter(site_routes)), *websocket_urlpatterns, websocket_not_found]
    )

    async def attempt() -> None:
        refused = WebsocketCommunicator(router, route)
        assert await refused.connect(TIMEOUT) == (False, 1000)
        # The routes before it still take theirs.
        taken = WebsocketCommunicator(router, "/chat/room/")
        assert (await taken.connect(TIMEOUT))[0] is True
        await taken.disconnect()

    run(attempt)
    assert realtime.connections == 0


def test_a_bad_signature_is_refused(
    engine: Any, user: Any, realtime: LoopbackRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    row, token, secret = site_row(user)
    forged = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")
    with caplog.at_level(logging.WARNING):
        _refused(socket(forged, secret))
    _assert_logged_without(caplog, forged, secret)
    assert "signature" in caplog.text
    assert realtime.connections == 0
    row.refresh_from_db()
    assert row.engine_connected_at is None


def test_an_expired_token_is_refused(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = live(user, "sess-1", engine="site")
    signed_at = time.time() - 121  # CONNECT_WITHIN is 120 s
    with monkeypatch.context() as patched:
        patched.setattr("django.core.signing.time.time", lambda: signed_at)
        credentials = tokens.mint(row.pk)
    Session.objects.filter(pk=row.pk).update(
        engine_secret_hash=credentials.secret_hash, engine_plan=settings_plan()
    )
    with caplog.at_level(logging.WARNING):
        _refused(socket(credentials.token, credentials.secret))
    _assert_logged_without(caplog, credentials.token, credentials.secret)
    assert "expired" in caplog.text
    assert realtime.connections == 0


def test_another_sessions_secret_is_refused(
    engine: Any, user: Any, realtime: LoopbackRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    row, token, _ = site_row(user)
    _, _, other_secret = site_row(user, "sess-2")
    with caplog.at_level(logging.WARNING):
        _refused(socket(token, other_secret))
    _assert_logged_without(caplog, token, other_secret)
    row.refresh_from_db()
    assert row.engine_connected_at is None  # a refusal does not use the token up


@pytest.mark.parametrize("secret", [None, "", "not-the-secret"])
def test_a_missing_or_wrong_secret_is_refused(
    engine: Any, user: Any, realtime: LoopbackRealtime, secret: str | None
) -> None:
    row, token, _ = site_row(user)
    _refused(socket(token, secret))
    assert realtime.connections == 0
    row.refresh_from_db()
    assert row.engine_connected_at is None


def test_a_row_without_an_engine_plan_is_refused(
    engine: Any, user: Any, realtime: LoopbackRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    row, token, secret = site_row(user)
    Session.objects.filter(pk=row.pk).update(engine_plan=None)
    with caplog.at_level(logging.WARNING):
        _refused(socket(token, secret))
    assert "no engine plan" in caplog.text
    assert realtime.connections == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"status": SessionStatus.ENDED},
        {"status": SessionStatus.ENDING},
        {"status": SessionStatus.FAILED},
        {"engine": "openai-realtime"},
    ],
)
def test_a_row_ended_or_of_another_engine_is_refused(
    engine: Any, user: Any, realtime: LoopbackRealtime, fields: dict[str, Any]
) -> None:
    _, token, secret = site_row(user, **fields)
    _refused(socket(token, secret))
    assert realtime.connections == 0


def test_a_database_failing_while_the_socket_is_checked_refuses_it_without_a_traceback(
    engine: Any, user: Any, realtime: LoopbackRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    """Not an unhandled error (an HTTP 500 and the server's traceback); the token is not
    used up, so a retry once the database is back may connect."""
    row, token, secret = site_row(user)

    def database_down(*args: Any) -> Any:
        raise OperationalError("the database went away")

    def wrap(add: bool) -> None:
        # In the thread the consumer's database work runs in (thread-sensitive).
        wrappers = connection.execute_wrappers
        wrappers.append(database_down) if add else wrappers.remove(database_down)

    async def attempt() -> None:
        await database_sync_to_async(wrap)(True)
        try:
            assert await socket(token, secret).connect(TIMEOUT) == (False, 4011)
        finally:
            await database_sync_to_async(wrap)(False)

    with caplog.at_level(logging.WARNING):
        run(attempt)

    (record,) = [r for r in caplog.records if "Refused a site engine socket" in r.getMessage()]
    assert "the database failed" in record.getMessage()
    assert record.exc_info is None
    for credential in (token, secret):
        assert credential not in caplog.text
    row.refresh_from_db()
    assert row.engine_connected_at is None
    assert realtime.connections == 0


def test_a_token_naming_no_row_is_refused(engine: Any, realtime: LoopbackRealtime) -> None:
    credentials = tokens.mint(999_999)
    _refused(socket(credentials.token, credentials.secret))


def test_an_inactive_user_is_refused(engine: Any, user: Any, realtime: LoopbackRealtime) -> None:
    _, token, secret = site_row(user)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    _refused(socket(token, secret))


def test_a_token_is_used_once(engine: Any, user: Any, realtime: LoopbackRealtime) -> None:
    _, token, secret = site_row(user)

    async def test() -> None:
        first = socket(token, secret)
        assert (await first.connect(TIMEOUT))[0] is True
        await eventually(lambda: realtime.open == 1)
        second = socket(token, secret)
        assert await second.connect(TIMEOUT) == (False, 1008)
        # The first conversation goes on.
        await first.send_to(bytes_data=PCM)
        await eventually(lambda: len(realtime.of_type("input_audio_buffer.append")) == 1)
        await left(first)

    run(test)
    assert realtime.connections == 1


def test_a_row_still_starting_is_accepted(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """Avaturn may connect before its create has answered the start."""
    row, token, secret = site_row(user, status=SessionStatus.STARTING, started_at=None)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await left(communicator)

    run(test)
    row.refresh_from_db()
    assert row.engine_connected_at is not None


# ---------------------------------------------------------------------- the conversation


def test_audio_flows_both_ways_and_opens_openai_with_the_sites_key(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    realtime.reply_audio = b"\x02\x00" * 480
    _, token, secret = site_row(user)

    async def test() -> None:
        communicator = socket(token, secret)
        assert (await communicator.connect(TIMEOUT))[0] is True
        await communicator.send_to(bytes_data=PCM)
        created = json.loads(await communicator.receive_from(TIMEOUT))
        assert created["type"] == "avatar.speech.segment.create"
        assert await communicator.receive_from(TIMEOUT) == realtime.reply_audio
        closed = json.loads(await communicator.receive_from(TIMEOUT))
        assert closed == {
            "type": "avatar.speech.segment.close",
            "segment_uid": created["segment_uid"],
        }
        await left(communicator)

    run(test)
    (append,) = realtime.of_type("input_audio_buffer.append")
    assert append["audio"] == base64.b64encode(PCM).decode()
    assert realtime.authorizations == ["Bearer sk-test-openai-0123456789"]


def test_openai_is_opened_with_the_rows_engine_plan(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    row, token, secret = site_row(user)
    plan = settings_plan()
    plan["realtime_session"]["instructions"] = "Only about this visitor's orders."
    Session.objects.filter(pk=row.pk).update(engine_plan=plan)

    async def test() -> None:
        communicator = socket(token, secret)
        assert (await communicator.connect(TIMEOUT))[0] is True
        await eventually(lambda: bool(realtime.of_type("session.update")))
        await left(communicator)

    run(test)
    (update,) = realtime.of_type("session.update")
    assert update["session"]["instructions"] == "Only about this visitor's orders."


def test_the_engine_writes_both_sides_of_the_transcript(
    engine: Any, user: Any, realtime: LoopbackRealtime, avaturn: AvaturnOverrides
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(realtime.push)(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_u",
                "transcript": "Where is my order?",
            }
        )
        await sync_to_async(realtime.push)(
            {
                "type": "response.output_audio_transcript.done",
                "response_id": "resp_1",
                "item_id": "item_a",
                "transcript": "It shipped today.",
            }
        )
        count = sync_to_async(Transcript.objects.filter(session_id=row.pk).count)
        deadline = time.monotonic() + TIMEOUT
        while await count() < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await left(communicator)

    run(test)
    lines = list(Transcript.objects.filter(session=row).order_by("pk").values_list("role", "text"))
    assert lines == [("user", "Where is my order?"), ("avatar", "It shipped today.")]


@pytest.mark.parametrize("respond", [False, True])
def test_a_message_from_the_page_reaches_the_model_as_the_visitors_input(
    engine: Any, user: Any, realtime: LoopbackRealtime, respond: bool
) -> None:
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        message = layer.page_message({"kind": "card", "n": 1}, respond=respond)
        await layer.send(row.pk, message)
        await eventually(lambda: bool(realtime.of_type("conversation.item.create")))
        if respond:
            await eventually(lambda: bool(realtime.of_type("response.create")))
        await left(communicator)

    run(test)
    (created,) = realtime.of_type("conversation.item.create")
    item = created["item"]
    assert (item["type"], item["role"]) == ("message", "user")
    (content,) = item["content"]
    assert content["type"] == "input_text"
    assert content["text"].endswith('{"kind":"card","n":1}')
    assert "Not spoken" in content["text"]
    assert len(realtime.of_type("response.create")) == (1 if respond else 0)


def test_say_asks_the_model_to_speak(engine: Any, user: Any, realtime: LoopbackRealtime) -> None:
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(services.say)(row, "Your parcel is out for delivery.")
        await eventually(lambda: bool(realtime.of_type("response.create")))
        await left(communicator)

    run(test)
    (create,) = realtime.of_type("response.create")
    assert "Your parcel is out for delivery." in json.dumps(create)


# ---------------------------------------------------------------------- ending


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (1000, "Avaturn closed the engine socket (1000)."),
        # A frame past a size limit: uvicorn hands the application its own close.
        (
            1009,
            "The engine socket closed (1009): a frame was refused, by the server or by Avaturn.",
        ),
    ],
)
def test_avaturn_closing_closes_openai_and_ends_the_row(
    engine: Any, user: Any, realtime: LoopbackRealtime, code: int, detail: str
) -> None:
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await left(communicator, code)
        ended_row = await ended(row.pk)
        assert (ended_row.status, ended_row.end_reason) == (
            SessionStatus.ENDED,
            EndReason.ENGINE_CLOSED,
        )
        assert ended_row.end_detail == detail
        await eventually(lambda: realtime.open == 0)

    run(test)
    # Its Avaturn session is terminated too (nothing left running).
    assert engine.avaturn.deleted == ["sess-1"]


def test_under_a_read_replica_the_engine_reads_its_row_where_it_is_written(
    engine: Any, user: Any, realtime: LoopbackRealtime, settings: Any
) -> None:
    """Its check of the row before accepting, and its end, read the primary (a replica may
    lag the start that wrote the row); here any read of the replica fails."""
    row, token, secret = site_row(user)
    settings.DATABASE_ROUTERS = ["tests.routers.ReadsFromAReplica"]
    primary = Session.objects.using("default")

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await left(communicator, 1000)
        deadline = time.monotonic() + TIMEOUT
        while (await sync_to_async(primary.get)(pk=row.pk)).status != SessionStatus.ENDED:
            assert time.monotonic() < deadline, "the row did not end"
            await asyncio.sleep(0.02)

    run(test)
    assert engine.avaturn.deleted == ["sess-1"]
    assert primary.get(pk=row.pk).end_reason == EndReason.ENGINE_CLOSED


def test_a_failed_terminate_after_avaturn_closes_leaves_the_row_to_the_expiry_command(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    row, token, secret = site_row(user)
    engine.avaturn.on_delete(500, {"detail": "busy"})

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await left(communicator, 1000)
        await eventually(lambda: realtime.open == 0)
        deadline = time.monotonic() + TIMEOUT
        while not (await row_of(row.pk)).awaiting_retry:
            assert time.monotonic() < deadline, "the row was never left for a retry"
            await asyncio.sleep(0.02)

    run(test)
    row.refresh_from_db()
    # Not live again: nobody would end it but the expiry command, which now will,
    # and the process's exit, which retries it first.
    assert (row.status, row.end_reason) == (SessionStatus.ENDING, EndReason.ENGINE_CLOSED)
    assert engine.avaturn.delete_calls()
    assert row.pk in shutdown.left_running()


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_cancelled_consumer_still_ends_the_row_and_closes_openai(
    engine: Any, user: Any, realtime: LoopbackRealtime, cancels: int
) -> None:
    """daphne stops an application by cancelling it (shutdown, its close timeout), and
    cancels it again every second while it has not finished: a second cancel that lands
    while the consumer winds its readers down must not skip the end."""
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        for _ in range(cancels):
            communicator.future.cancel()
            await asyncio.sleep(0)
        ended_row = await ended(row.pk)
        assert ended_row.end_reason == EndReason.ENGINE_CLOSED
        await eventually(lambda: realtime.open == 0)

    run(test)
    assert engine.avaturn.deleted == ["sess-1"]


def test_a_channel_layer_that_fails_to_join_does_not_strand_the_conversation(
    engine: Any, user: Any, realtime: LoopbackRealtime, settings: Any
) -> None:
    pytest.importorskip("channels_redis")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{closed_port()}/0"]},
        }
    }
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await left(communicator, 1000)
        ended_row = await ended(row.pk)
        assert ended_row.end_reason == EndReason.ENGINE_CLOSED
        await eventually(lambda: realtime.open == 0)

    run(test)


@pytest.fixture
def hooked_layer(settings: Any) -> Iterator[type[HookedLayer]]:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.channel_layers.HookedLayer"}}
    yield HookedLayer
    HookedLayer.failing_joins, HookedLayer.before_join = 0, None
    HookedLayer.after_join = HookedLayer.before_discard = None
    HookedLayer.cancels_to_lose = 0


def test_the_consumer_returns_though_the_layers_read_loses_a_cancel(
    engine: Any, user: Any, realtime: LoopbackRealtime, hooked_layer: type[HookedLayer]
) -> None:
    """The consumer stops its readers by cancelling them, again until they have ended: a
    layer's read that reads on after a cancel (channels_redis, before Python 3.12) must
    not keep the consumer, nor the server's shutdown, waiting for ever."""
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        hooked_layer.cancels_to_lose = 1
        await left(communicator)
        assert hooked_layer.cancels_to_lose == 0  # (the read did lose one)
        assert (await row_of(row.pk)).end_reason == EndReason.ENGINE_CLOSED

    run(test)


@pytest.mark.parametrize("router", [None, "tests.routers.ReadsFromAReplica"])
def test_the_site_ending_the_session_before_the_socket_joins_its_group_closes_it(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    hooked_layer: type[HookedLayer],
    settings: Any,
    router: str | None,
) -> None:
    """The end's message went to a group with nobody in it: the consumer reads the row
    again once it has joined (where it is written: a replica may not show the end yet)."""
    row, token, secret = site_row(user)
    settings.DATABASE_ROUTERS = [router] if router else []

    async def end_first() -> None:
        await sync_to_async(services.end_session)(row, reason=EndReason.ADMIN)

    hooked_layer.before_join = end_first

    async def test() -> None:
        communicator = socket(token, secret)
        assert (await communicator.connect(TIMEOUT))[0] is True
        await closed_by_the_site(communicator, realtime)

    run(test)
    row.refresh_from_db(using="default")
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    assert row.pk not in shutdown.left_running()


def test_the_sites_end_finishes_after_avaturn_answers_its_close(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    hooked_layer: type[HookedLayer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Avaturn's disconnect, answering the close the end sent, stops the consumer while
    the end is still leaving the session's group (a layer slow to answer): the end
    still finishes."""
    row, token, secret = site_row(user)

    async def slow_discard() -> None:
        await asyncio.sleep(0.2)

    hooked_layer.before_discard = slow_discard

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(services.end_session)(row, reason=EndReason.CLIENT)
        assert (await closed_with(communicator))["code"] == 1000
        await left(communicator)

    with caplog.at_level(logging.INFO, logger="django_avaturn.engine.consumer"):
        run(test)
    assert layer.group_name(row.pk) not in get_channel_layer().groups
    assert f"Site engine socket of session row {row.pk} closed" in caplog.text


def test_a_failed_group_join_is_retried_so_the_sites_end_still_reaches_the_socket(
    engine: Any, user: Any, realtime: LoopbackRealtime, hooked_layer: type[HookedLayer]
) -> None:
    row, token, secret = site_row(user)
    hooked_layer.failing_joins = 2

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await eventually(lambda: hooked_layer.failing_joins == 0)
        # Before or after the join that succeeds (a second later), the end reaches it.
        await sync_to_async(services.end_session)(row, reason=EndReason.ADMIN)
        await closed_by_the_site(communicator, realtime)

    run(test)


def test_an_end_while_a_retried_join_waits_for_the_layer_leaves_the_group(
    engine: Any, user: Any, realtime: LoopbackRealtime, hooked_layer: type[HookedLayer]
) -> None:
    """The retried join took effect, but the layer's answer had not come back when the
    conversation ended (which cancels the retry): the consumer leaves the group anyway."""
    row, token, secret = site_row(user)
    hooked_layer.failing_joins = 1
    joined = asyncio.Event()

    async def answer_never() -> None:
        joined.set()
        await asyncio.Event().wait()

    hooked_layer.after_join = answer_never

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await asyncio.wait_for(joined.wait(), TIMEOUT)  # the retry, a second later
        await left(communicator)  # Avaturn leaves

    run(test)
    assert layer.group_name(row.pk) not in get_channel_layer().groups


def test_a_failure_of_ours_on_avaturns_message_ends_the_call_cleanly(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in handling one of Avaturn's messages (stood in for by a handler that
    raises): both sockets close and the row says why, instead of a dead pump."""
    row, token, secret = site_row(user)

    async def broken(self: Any, text: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("django_avaturn.engine.bridge.Bridge.feed_message", broken)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await communicator.send_to(text_data='{"type": "avatar.speech.segment.created"}')
        close = await closed_with(communicator)
        assert close["code"] == 4011
        await left(communicator)
        ended_row = await ended(row.pk)
        assert (ended_row.status, ended_row.end_reason) == (
            SessionStatus.FAILED,
            EndReason.SITE_ERROR,
        )
        assert ended_row.end_detail == (
            "The engine failed on a message from Avaturn: RuntimeError: a bug"
        )
        await eventually(lambda: realtime.open == 0)

    with caplog.at_level(logging.ERROR):
        run(test)
    assert "The site engine failed on a message from Avaturn" in caplog.text
    assert engine.avaturn.deleted == ["sess-1"]


def test_a_handler_failing_still_ends_the_conversation(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """A bug of ours in a handler (here: a page message the in-memory layer passed on
    unchecked, which JSON cannot hold) stops the consumer: OpenAI is closed and the row
    ends all the same, rather than both left running."""
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await get_channel_layer().group_send(
            layer.group_name(row.pk), layer.page_message({"not JSON": {1, 2}})
        )
        assert (await closed_with(communicator))["code"] == 4011
        with pytest.raises(TypeError):
            await communicator.wait(TIMEOUT)
        await eventually(lambda: realtime.open == 0)

    run(test)
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.FAILED, EndReason.SITE_ERROR)
    assert row.end_detail.startswith("The engine failed: TypeError")
    assert row.pk not in shutdown.left_running()


def test_a_server_shutdown_is_what_the_row_says(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await left(communicator, 1012)  # what uvicorn and daphne send on shutdown
        ended_row = await ended(row.pk)
        assert ended_row.end_reason == EndReason.ENGINE_CLOSED
        assert "server shut down" in ended_row.end_detail
        await eventually(lambda: realtime.open == 0)

    run(test)


@pytest.mark.parametrize(
    ("how", "detail"),
    [("close", "OpenAI closed the connection"), ("drop", "OpenAI's connection failed")],
)
def test_openai_closing_or_failing_closes_avaturns_socket_and_says_why(
    engine: Any, user: Any, realtime: LoopbackRealtime, how: str, detail: str
) -> None:
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        if how == "close":
            await sync_to_async(realtime.close_all)(1000, "session over")
        else:
            await sync_to_async(realtime.drop_all)()
        close = await closed_with(communicator)
        assert close["code"] == 4011
        assert detail in close.get("reason", "")
        await left(communicator)
        ended_row = await ended(row.pk)
        assert ended_row.end_reason == EndReason.UPSTREAM_ERROR
        assert detail in ended_row.end_detail
        await eventually(lambda: realtime.open == 0)

    run(test)
    assert engine.avaturn.deleted == ["sess-1"]


def test_the_consumer_returns_once_an_end_openai_began_has_finished(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """OpenAI closed: the bridge's task ends the conversation, and Avaturn's disconnect,
    answering the 4011, stops the consumer while that end still terminates the session
    (a slow terminate here). The consumer returns only once the row has ended."""
    row, token, secret = site_row(user)

    def slow_terminate(request: Any) -> tuple[int, dict[str, str], str]:
        time.sleep(0.5)
        return 204, {}, ""

    engine.avaturn.on_delete_call(slow_terminate)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(realtime.close_all)(1000, "session over")
        assert (await closed_with(communicator))["code"] == 4011
        await left(communicator)
        # No waiting from here on: the consumer has returned.
        assert (await row_of(row.pk)).status == SessionStatus.FAILED
        assert layer.group_name(row.pk) not in get_channel_layer().groups

    run(test)


def test_openai_unreachable_closes_avaturns_socket_and_ends_the_row(
    engine: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(
        SITE_ENGINE={
            "PUBLIC_URL": "wss://avatar.example.com",
            "OPENAI_WEBSOCKET_URL": f"ws://127.0.0.1:{closed_port()}/v1",
        }
    )
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = socket(token, secret)
        assert (await communicator.connect(TIMEOUT))[0] is True
        close = await closed_with(communicator)
        assert close["code"] == 4011
        await left(communicator)
        ended_row = await ended(row.pk)
        assert ended_row.end_reason == EndReason.UPSTREAM_ERROR
        assert "could not open OpenAI Realtime" in ended_row.end_detail

    run(test)


@pytest.mark.parametrize("reason", [EndReason.CLIENT, EndReason.ADMIN, EndReason.REPLACED])
def test_the_site_ending_the_session_closes_both_sockets_at_once(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(services.end_session)(row, reason=reason)
        await closed_by_the_site(communicator, realtime)

    with caplog.at_level(logging.INFO, logger="django_avaturn.engine.consumer"):
        run(test)
    row.refresh_from_db()
    # The site's end, as the site recorded it: the engine's close adds nothing.
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, reason)
    assert f"Site engine socket of session row {row.pk} closed ({reason})" in caplog.text
    assert engine.avaturn.deleted == ["sess-1"]


def test_the_site_ending_the_session_closes_both_sockets_while_openai_reads_nothing(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """OpenAI's TCP stalls: the engine's sends to it wait on the socket's buffers, and
    would until the keepalive gives up (about 40 s). The site's end must not wait
    behind them, nor the close of OpenAI's socket for a handshake it cannot finish."""
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        realtime.stall()
        # Avaturn streams faster than OpenAI reads, until the engine's sends back up: its
        # frames wait in the consumer's queue and stop being taken. Noise, not a tone:
        # the sockets negotiate compression, and a tone would take megabytes per byte.
        queue = communicator.input_queue
        for _ in range(100):
            for _ in range(1000):
                noise = os.urandom(len(PCM))
                await communicator.send_input({"type": "websocket.receive", "bytes": noise})
            waiting = queue.qsize()
            await asyncio.sleep(0.3)
            if queue.qsize() == waiting > 0:
                break
        else:
            raise AssertionError("the engine's sends to OpenAI never backed up")

        # Loose bounds (a loaded machine): the stalled send would hold the end for as long
        # as the keepalive allows, about 40 s.
        started = time.monotonic()
        await sync_to_async(services.end_session)(row, reason=EndReason.CLIENT)
        assert (await closed_with(communicator, timeout=20))["code"] == 1000
        assert time.monotonic() - started < 20
        # What OpenAI reads from now on ends where the engine dropped the connection.
        # (The engine's kernel resends once TCP's persist timer, backed off while the
        # window was shut, probes again: seconds.)
        realtime.resume()
        await eventually(lambda: realtime.open == 0, timeout=30)
        await left(communicator)  # raises what the consumer raised, if anything

    run(test)
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.CLIENT)


@pytest.mark.parametrize("reason", [EndReason.ADMIN, EndReason.SHUTDOWN, EndReason.USER])
def test_the_site_ending_the_session_closes_the_sockets_even_when_the_terminate_fails(
    engine: Any, user: Any, realtime: LoopbackRealtime, reason: str
) -> None:
    """Avaturn's API failing must not leave the conversation running until the retry:
    the engine closes its socket (which ends the Avaturn session) all the same."""
    row, token, secret = site_row(user)
    engine.avaturn.on_delete(500, {"detail": "busy"})

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        with contextlib.suppress(AvaturnError):
            await sync_to_async(services.end_session)(row, reason=reason)
        await closed_by_the_site(communicator, realtime)

    run(test)
    row.refresh_from_db()
    # Left for the expiry command's retry (the visitor's own Stop, which the widget
    # retries, puts the row back to live instead, with its conversation).
    assert (row.status, row.awaiting_retry) == (SessionStatus.ENDING, True)


def test_deleting_the_user_closes_their_engine_sockets(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    _row, token, secret = site_row(user)
    engine.avaturn.on_delete(500, {"detail": "busy"})

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(user.delete)()
        await closed_by_the_site(communicator, realtime)

    run(test)
    assert not Session.objects.exists()


def test_a_create_with_an_unknown_outcome_closes_a_socket_connected_meanwhile(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """Avaturn connected the engine while its create ran, then the create timed out: the
    session it may have started has no id to terminate, so the engine closes its socket
    (which ends it). The row keeps its slot, ending, for the expiry command."""
    row, token, secret = site_row(user)
    Session.objects.filter(pk=row.pk).update(status=SessionStatus.STARTING, session_id=None)
    row.refresh_from_db()

    async def test() -> None:
        communicator = await talking(token, secret, realtime)
        await sync_to_async(transitions.hold_unknown_outcome)(row, TimeoutError("read timed out"))
        await closed_by_the_site(communicator, realtime)

    run(test)
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.ENDING, EndReason.UPSTREAM_ERROR)
    assert engine.avaturn.deleted == []


def test_the_kill_switch_closes_every_engine(
    engine: Any, user: Any, other_user: Any, realtime: LoopbackRealtime
) -> None:
    first = site_row(user)
    second = site_row(other_user, "sess-2")

    async def test() -> None:
        communicators = [socket(token, secret) for _, token, secret in (first, second)]
        for communicator in communicators:
            assert (await communicator.connect(TIMEOUT))[0] is True
        await eventually(lambda: realtime.open == 2)
        await sync_to_async(services.end_sessions)(Session.objects.all(), reason=EndReason.SHUTDOWN)
        for communicator in communicators:
            assert (await closed_with(communicator))["code"] == 1000
            await left(communicator)
        await eventually(lambda: realtime.open == 0)

    run(test)
    assert set(Session.objects.values_list("end_reason", flat=True)) == {EndReason.SHUTDOWN}


# ---------------------------------------------------------------------- with the scripted fake


def test_a_scripted_conversation_runs_the_sites_tool_as_the_sessions_user(
    avaturn: AvaturnOverrides, settings: Any, upstream: Any, user: Any
) -> None:
    """Start → talk → a tool that shows a card → OpenAI goes away: h-fakes' FakeRealtime."""
    script = Script(
        [
            CallTool("whoami", call_id="call_who", after_audio_ms=40),
            CallTool(
                "show_card",
                arguments='{"title": "Order 7"}',
                call_id="call_card",
                after_audio_ms=40,
            ),
            Close(code=1011, reason="scripted end", after_audio_ms=40),
        ]
    )
    settings.CHANNEL_LAYERS = IN_MEMORY
    with FakeRealtime(script, api_key="sk-test-openai-0123456789") as fake:
        avaturn(
            ENGINE="site",
            SITE_ENGINE={
                "PUBLIC_URL": "wss://avatar.example.com",
                "OPENAI_WEBSOCKET_URL": fake.websocket_base_url,
                "TOOLS": ["tests.engine_tools_example"],
            },
        )
        row, token, secret = site_row(user)
        page: list[dict[str, Any]] = []

        async def test() -> None:
            communicator = socket(token, secret)
            assert (await communicator.connect(TIMEOUT))[0] is True
            close: dict[str, Any] | None = None
            deadline = time.monotonic() + 3 * TIMEOUT
            while close is None:
                assert time.monotonic() < deadline, "the script did not end"
                await communicator.send_to(bytes_data=PCM)
                # (receive_output's timeout would cancel the application: look first.)
                while not await communicator.receive_nothing(0.02):
                    output = await communicator.receive_output(TIMEOUT)
                    if output["type"] == "websocket.close":
                        close = output
                        break
                    text = output.get("text")
                    if text and json.loads(text)["type"] == "sdk.message.send":
                        page.append(json.loads(text)["data"])
            assert close["code"] == 4011
            await left(communicator)
            ended_row = await ended(row.pk)
            assert ended_row.end_reason == EndReason.UPSTREAM_ERROR
            assert "scripted end" in ended_row.end_detail

        run(test)
        assert fake.wait_until(lambda: fake.open_connections == 0)
        (connection,) = fake.connections
        outputs = {item["call_id"]: item["output"] for item in connection.function_call_outputs}
        who = json.loads(outputs["call_who"])["result"]
        # The user is the session's: the model never chose it.
        assert (who["email"], who["session"]) == (user.email, row.pk)
        assert json.loads(outputs["call_card"]) == {"result": "shown"}
        assert page == [
            {"type": "django_avaturn.message", "data": {"card": "Order 7", "n": 1}},
            {"type": "django_avaturn.message", "data": {"card": "Order 7", "n": 2}},
        ]
    calls = set(ToolCall.objects.filter(session=row).values_list("tool", "status"))
    assert calls == {("whoami", "ok"), ("show_card", "ok")}


def test_openai_refusing_the_session_ends_the_conversation(
    avaturn: AvaturnOverrides, settings: Any, upstream: Any, user: Any
) -> None:
    """A configuration OpenAI refuses (an unknown voice, say) would leave the model
    without the site's instructions and tools: the call ends, and the row says why."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    with FakeRealtime(Script([]), api_key="sk-test-openai-0123456789") as fake:
        fake.refuse_session = "Invalid value: 'nobody'. Supported values are: 'marin'."
        avaturn(
            ENGINE="site",
            SITE_ENGINE={
                "PUBLIC_URL": "wss://avatar.example.com",
                "OPENAI_WEBSOCKET_URL": fake.websocket_base_url,
            },
        )
        row, token, secret = site_row(user)

        async def test() -> None:
            communicator = socket(token, secret)
            assert (await communicator.connect(TIMEOUT))[0] is True
            close = await closed_with(communicator)
            assert close["code"] == 4011
            assert close["reason"].startswith("OpenAI Realtime refused the session")
            await left(communicator)
            ended_row = await ended(row.pk)
            assert (ended_row.status, ended_row.end_reason) == (
                SessionStatus.FAILED,
                EndReason.UPSTREAM_ERROR,
            )
            assert ended_row.end_detail == (
                "OpenAI Realtime refused the session (invalid_value: Invalid value: "
                "'nobody'. Supported values are: 'marin'.)."
            )

        run(test)
        assert fake.wait_until(lambda: fake.open_connections == 0)
        (connection,) = fake.connections
        (error,) = connection.errors_sent
        assert error["event_id"] == "django_avaturn_session_update"
        assert connection.session_updates == []  # refused: nothing of it applied
    assert upstream.avaturn.deleted == ["sess-1"]


# ---------------------------------------------------------------------- the frames' path


def test_frames_reach_openai_while_the_shared_database_thread_is_busy(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """Avaturn's frames never wait on the one thread that thread-sensitive database calls
    share (Channels' dispatch hops to it before every message to close old connections)."""
    _, token, secret = site_row(user)
    release = threading.Event()

    async def test() -> None:
        communicator = socket(token, secret)
        assert (await communicator.connect(TIMEOUT))[0] is True
        await eventually(lambda: bool(realtime.of_type("session.update")))
        held = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=True)())
        try:
            for n in range(5):
                await communicator.send_to(bytes_data=bytes([n]) * 960)
            await eventually(lambda: len(realtime.of_type("input_audio_buffer.append")) == 5)
        finally:
            release.set()
            await held
        await left(communicator)

    run(test)
    appended = [e["audio"] for e in realtime.of_type("input_audio_buffer.append")]
    assert appended == [base64.b64encode(bytes([n]) * 960).decode() for n in range(5)]


class LeftAvaturn:
    """The server's side of Avaturn's socket as uvicorn behaves once Avaturn has left:
    every frame sent raises uvicorn's ``ClientDisconnected``; ``websocket.disconnect``
    reaches the consumer when the test puts it in."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.gone = False
        self.failed_sends = 0

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone and message["type"] == "websocket.send":
            self.failed_sends += 1
            raise ClientDisconnected
        self.sent.append(message)

    def scope(self, token: str, secret: str) -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": f"/avaturn/engine/{token}/",
            "raw_path": f"/avaturn/engine/{token}/".encode(),
            "query_string": b"",
            "headers": [(b"x-avaturn-engine-secret", secret.encode())],
            "subprotocols": [],
        }


@pytest.mark.parametrize("disconnect", ["after the failed send", "never"])
def test_avaturn_leaving_while_the_engine_sends_ends_the_row_as_avaturns(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    caplog: pytest.LogCaptureFixture,
    disconnect: str,
) -> None:
    """A send to Avaturn failing because Avaturn left is Avaturn's end (``client``), not
    OpenAI's, and an ordinary disconnect logs no traceback."""
    realtime.reply_audio = b"\x02\x00" * 480
    row, token, secret = site_row(user)
    left = LeftAvaturn()

    async def test() -> None:
        app = URLRouter(websocket_urlpatterns)
        await left.incoming.put({"type": "websocket.connect"})
        task = asyncio.ensure_future(app(left.scope(token, secret), left.receive, left.send))
        await eventually(lambda: bool(realtime.of_type("session.update")))
        assert left.sent[0]["type"] == "websocket.accept"
        left.gone = True
        # Audio in: OpenAI answers with audio, which the engine fails to send to Avaturn.
        await left.incoming.put({"type": "websocket.receive", "bytes": PCM})
        await eventually(lambda: left.failed_sends > 0)
        if disconnect == "never":
            # The row still ends (after STOP_WAIT), as Avaturn's.
            ended_row = await ended(row.pk, STOP_WAIT + TIMEOUT)
            assert "closed while the engine sent to it" in ended_row.end_detail
            assert "ClientDisconnected" in ended_row.end_detail
            await left.incoming.put({"type": "websocket.disconnect", "code": 1006})
        else:
            await asyncio.sleep(0.1)  # the failed send is handled before the disconnect
            await left.incoming.put({"type": "websocket.disconnect", "code": 1006})
            ended_row = await ended(row.pk)
            assert "Avaturn closed the engine socket (1006)" in ended_row.end_detail
        assert (ended_row.status, ended_row.end_reason) == (
            SessionStatus.ENDED,
            EndReason.ENGINE_CLOSED,
        )
        await asyncio.wait_for(task, TIMEOUT)
        await eventually(lambda: realtime.open == 0)

    with caplog.at_level(logging.INFO):
        run(test)
    assert "bridge failed" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ---------------------------------------------------------------------- at exit


def test_a_conversation_is_registered_while_it_runs(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """Accepted: its row is left running; ended: it is not (nothing for the exit to do)."""
    row, token, secret = site_row(user)

    async def test() -> None:
        communicator = socket(token, secret)
        assert (await communicator.connect(TIMEOUT))[0] is True
        assert row.pk in shutdown.left_running()
        await left(communicator, 1000)
        await ended(row.pk)
        await eventually(lambda: row.pk not in shutdown.left_running())

    run(test)


def test_a_refused_socket_is_not_registered(engine: Any, user: Any) -> None:
    row, token, _secret = site_row(user)
    _refused(socket(token, "not the secret"))
    assert row.pk not in shutdown.left_running()


def test_the_exit_ends_the_conversations_left_running(engine: Any, user: Any) -> None:
    """The server's loop stopped with them running: at exit their rows end and their
    Avaturn sessions are terminated."""
    rows = [site_row(user, session_id)[0] for session_id in ("sess-1", "sess-2")]
    for row in rows:
        shutdown.running(row.pk)
    shutdown.end_left_running()
    for row in rows:
        row.refresh_from_db()
        assert (row.status, row.end_reason, row.end_detail) == (
            SessionStatus.ENDED,
            EndReason.ENGINE_CLOSED,
            shutdown.EXIT_DETAIL,
        )
    assert sorted(engine.avaturn.deleted) == ["sess-1", "sess-2"]
    assert shutdown.left_running() == []


def test_the_exit_leaves_a_database_it_no_longer_has_alone(
    engine: Any, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test database torn down before the exit: the row registered there is not looked
    for in the database that now has the alias."""
    row, _token, _secret = site_row(user)
    shutdown.running(row.pk)
    monkeypatch.setitem(connection.settings_dict, "NAME", "another database")
    shutdown.end_left_running()
    monkeypatch.undo()
    row.refresh_from_db()
    assert row.status == SessionStatus.LIVE
    assert engine.avaturn.deleted == []
    assert shutdown.left_running() == []


def test_frames_sent_before_the_engine_is_up_wait_for_it_and_none_is_lost(
    engine: Any, user: Any, realtime: LoopbackRealtime
) -> None:
    """Audio goes to the bridge without Channels' dispatch, still after the connect's
    handler (OpenAI opened, the bridge made) and in order."""
    _, token, secret = site_row(user)
    avaturn = LeftAvaturn()

    async def test() -> None:
        app = URLRouter(websocket_urlpatterns)
        await avaturn.incoming.put({"type": "websocket.connect"})
        for n in range(3):
            await avaturn.incoming.put({"type": "websocket.receive", "bytes": bytes([n]) * 960})
        task = asyncio.ensure_future(
            app(avaturn.scope(token, secret), avaturn.receive, avaturn.send)
        )
        await eventually(lambda: len(realtime.of_type("input_audio_buffer.append")) == 3)
        await avaturn.incoming.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, TIMEOUT)

    run(test)
    appended = [e["audio"] for e in realtime.of_type("input_audio_buffer.append")]
    assert appended == [base64.b64encode(bytes([n]) * 960).decode() for n in range(3)]


@pytest.mark.parametrize("when", ["the site ended the conversation", "OpenAI could not be opened"])
def test_a_frame_arriving_once_the_bridge_is_gone_is_dropped(
    engine: Any,
    user: Any,
    realtime: LoopbackRealtime,
    caplog: pytest.LogCaptureFixture,
    avaturn: AvaturnOverrides,
    when: str,
) -> None:
    row, token, secret = site_row(user)
    if when == "OpenAI could not be opened":
        avaturn(
            SITE_ENGINE={
                **avaturn_settings.SITE_ENGINE,
                "OPENAI_WEBSOCKET_URL": f"ws://127.0.0.1:{closed_port()}/v1",
            }
        )
    side = LeftAvaturn()

    async def test() -> None:
        app = URLRouter(websocket_urlpatterns)
        await side.incoming.put({"type": "websocket.connect"})
        task = asyncio.ensure_future(app(side.scope(token, secret), side.receive, side.send))
        if when == "the site ended the conversation":
            await eventually(lambda: bool(realtime.of_type("session.update")))
            await sync_to_async(services.end_sessions)(
                Session.objects.filter(pk=row.pk), reason=EndReason.SHUTDOWN
            )
        await eventually(
            lambda: side.sent[-1:] != [] and side.sent[-1]["type"] == "websocket.close"
        )
        await side.incoming.put({"type": "websocket.receive", "bytes": PCM})
        await asyncio.sleep(0.1)
        await side.incoming.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(task, TIMEOUT)
        await eventually(lambda: realtime.open == 0)

    with caplog.at_level(logging.INFO):
        run(test)
    assert realtime.of_type("input_audio_buffer.append") == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


class ServerSend:
    """The server's ``send`` as the consumer holds it (``base_send``), failing if asked."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.failure is not None:
            raise self.failure
        self.messages.append(message)


def test_the_bridges_sends_go_straight_to_the_servers_send() -> None:
    server = ServerSend()
    side = _AvaturnSide(SimpleNamespace(base_send=server))  # type: ignore[arg-type]

    async def test() -> None:
        await side.send_bytes(PCM)
        await side.send_text('{"type":"avatar.speech.interrupt"}')

    run(test)
    assert server.messages == [
        {"type": "websocket.send", "bytes": PCM},
        {"type": "websocket.send", "text": '{"type":"avatar.speech.interrupt"}'},
    ]


@pytest.mark.parametrize(
    "failure",
    [ClientDisconnected(), ConnectionClosed(None, None)],
    ids=["uvicorn's ClientDisconnected", "websockets' ConnectionClosed"],
)
def test_a_send_failing_because_avaturn_left_is_avaturn_gone(failure: BaseException) -> None:
    side = _AvaturnSide(SimpleNamespace(base_send=ServerSend(failure)))  # type: ignore[arg-type]

    async def test() -> None:
        for send, data in ((side.send_bytes, PCM), (side.send_text, "{}")):
            with pytest.raises(AvaturnGone, match=type(failure).__name__) as raised:
                await send(data)  # type: ignore[operator]
            assert raised.value.__cause__ is failure

    run(test)


def test_another_failure_of_a_send_is_not_taken_for_avaturn_leaving() -> None:
    side = _AvaturnSide(SimpleNamespace(base_send=ServerSend(RuntimeError("a bug"))))  # type: ignore[arg-type]

    async def test() -> None:
        with pytest.raises(RuntimeError, match="a bug"):
            await side.send_bytes(PCM)

    run(test)


class ClosingRealtime:
    """OpenAI's side as the consumer holds it: only whether it was closed matters here."""

    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


def test_an_end_cancelled_while_the_bridge_stops_still_closes_openai_and_ends_the_row(
    engine: Any, user: Any
) -> None:
    """The server may cancel the application mid-end (daphne's close timeout): what the end
    had left to do is done all the same."""
    from django_avaturn.engine.consumer import SiteEngineConsumer

    row, _, _ = site_row(user)
    shutdown.running(row.pk)
    realtime = ClosingRealtime()

    async def test() -> None:
        consumer = SiteEngineConsumer()
        consumer.row = row
        consumer.realtime = realtime
        # The bridge still closing OpenAI (a slow close handshake), past any patience.
        consumer.bridge_task = asyncio.ensure_future(asyncio.sleep(60))
        ending = asyncio.ensure_future(consumer._finish(EndReason.ENGINE_CLOSED, "Avaturn left"))
        await asyncio.sleep(0.1)
        ending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ending
        consumer.bridge_task.cancel()

    run(test)
    assert realtime.closed
    ended_row = Session.objects.get(pk=row.pk)
    assert (ended_row.status, ended_row.end_reason) == (
        SessionStatus.ENDED,
        EndReason.ENGINE_CLOSED,
    )
    assert row.pk not in shutdown.left_running()


def test_ending_a_row_says_what_ended_it_the_sockets_close_or_an_earlier_end(
    engine: Any, user: Any, upstream: Any
) -> None:
    """A Stop whose terminate made Avaturn close the socket: the row says ``client``,
    and that is what the consumer logs, not the ``engine_closed`` it would have recorded."""
    stopped, _token, _secret = site_row(user)
    services.end_session(stopped, reason=EndReason.CLIENT)
    assert end_row(stopped.pk, EndReason.ENGINE_CLOSED, "Avaturn closed it.") == (
        True,
        EndReason.CLIENT,
    )
    closed, _token, _secret = site_row(user, "sess-2")
    assert end_row(closed.pk, EndReason.ENGINE_CLOSED, "Avaturn closed it.") == (
        True,
        EndReason.ENGINE_CLOSED,
    )
    closed.refresh_from_db()
    assert (closed.status, closed.end_reason) == (SessionStatus.ENDED, EndReason.ENGINE_CLOSED)


def test_ending_a_row_when_the_database_fails_logs_it_and_never_raises(
    engine: Any, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``end_row`` runs in the consumer's ending, after its sockets closed: a database
    that fails there is logged against the row, and the row stays for the expiry command."""
    row, _token, _secret = site_row(user)

    def database_down(*args: Any) -> Any:
        raise OperationalError("the database went away")

    with caplog.at_level(logging.ERROR), connection.execute_wrapper(database_down):
        assert end_row(row.pk, EndReason.ENGINE_CLOSED, "Avaturn closed the socket.") == (
            False,
            EndReason.ENGINE_CLOSED,
        )

    assert f"Could not end session row {row.pk}" in caplog.text
    assert "the database went away" in caplog.text
    row.refresh_from_db()
    assert row.status == SessionStatus.LIVE
