"""The site engine end to end under real ASGI servers: uvicorn and daphne.

Each server runs in a process of its own (``engine_servers``), on the test
database, with a Redis channel layer and cache under this module's prefix.
The loopback fakes run here: ``FakeUpstream`` answers Avaturn's REST API
and, once a session is created, connects its ``AvaturnEngineClient`` to the
site's socket as Avaturn does; ``FakeRealtime`` plays OpenAI Realtime's side
from a script. Everything crosses real sockets: the start over HTTP, the
engine socket, OpenAI's socket, and the site's messages from this process to
the server's through Redis.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test import Client

from django_avaturn import services
from django_avaturn.engine import tokens
from django_avaturn.models import (
    EndReason,
    Session,
    SessionStatus,
    ToolCall,
    ToolCallStatus,
    Transcript,
)
from django_avaturn.testing import AVATURN_TERMINATE, FakeUpstream
from django_avaturn.testing.engine_client import AvaturnEngineClient
from django_avaturn.testing.realtime import CallTool, Close, FakeRealtime, Script, Speak
from tests.e2e.engine_redis import redis_cache, redis_layer
from tests.e2e.engine_servers import (
    SERVERS,
    EngineServer,
    database_settings,
    forget_prefix,
    missing_for,
    new_prefix,
)
from tests.helpers import LIST_URL, closed_port, live, redis_url
from tests.live_fake import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 15.0
# Different on each side: what OpenAI is told shows which process planned the session.
SERVER_INSTRUCTIONS = "Planned by the server process."
TEST_INSTRUCTIONS = "Planned by the test process."
TOOLS = ["tests.engine_tools_example"]


@dataclass
class Site:
    server: EngineServer
    upstream: FakeUpstream
    realtime: FakeRealtime
    prefix: str


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeUpstream, FakeRealtime]]:
    # Avaturn's side plays the avatar's speech 4x faster than real time: quicker ends.
    with (
        FakeUpstream(engine_client_options={"playback_rate": 4.0}) as upstream,
        FakeRealtime(Script(())) as realtime,
    ):
        yield upstream, realtime


@pytest.fixture(scope="module", params=SERVERS)
def engine_server(
    request: pytest.FixtureRequest,
    django_db_setup: None,
    fakes: tuple[FakeUpstream, FakeRealtime],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    reason = missing_for(request.param)
    if reason is not None:
        pytest.skip(reason)
    upstream, realtime = fakes
    prefix = new_prefix()
    port = closed_port()
    avaturn = _avaturn(upstream, realtime, f"ws://127.0.0.1:{port}")
    log_path: Path = tmp_path_factory.mktemp(request.param) / "server.log"
    server = EngineServer(
        request.param,
        port=port,
        database=database_settings(connection.settings_dict),
        avaturn={**avaturn, "INSTRUCTIONS": SERVER_INSTRUCTIONS},
        prefix=prefix,
        log_path=log_path,
    )
    try:
        yield Site(server, upstream, realtime, prefix)
    finally:
        upstream.reset()  # closes any engine client still connected
        server.stop()
        forget_prefix(prefix)


def _avaturn(upstream: FakeUpstream, realtime: FakeRealtime, public_url: str) -> dict[str, Any]:
    return {
        **upstream.settings(),
        "ENGINE": "site",
        "TRANSCRIPTS_ENABLED": True,
        "SITE_ENGINE": {
            "PUBLIC_URL": public_url,
            "TOOLS": TOOLS,
            "OPENAI_WEBSOCKET_URL": realtime.websocket_base_url,
            "TOOL_NOTICE_AFTER": None,
        },
    }


@pytest.fixture
def site(engine_server: Site, settings: Any) -> Iterator[Site]:
    """This process set up as the server is: the same fakes, layer and cache."""
    engine_server.upstream.reset()
    engine_server.realtime.reset()
    settings.DEBUG = True  # PUBLIC_URL is ws:// on loopback
    settings.CHANNEL_LAYERS = redis_layer(redis_url(), engine_server.prefix)
    settings.CACHES = redis_cache(redis_url(), engine_server.prefix)
    avaturn = {
        **settings.AVATURN,
        **_avaturn(engine_server.upstream, engine_server.realtime, engine_server.server.public_url),
        "INSTRUCTIONS": TEST_INSTRUCTIONS,
    }
    avaturn.pop("OPENAI_HTTP_CLIENT", None)
    settings.AVATURN = avaturn
    yield engine_server
    engine_server.upstream.reset()  # a failed test's engine client, if any, is closed


def assert_nothing_running(site: Site) -> None:
    """Whichever way the conversation ended: no socket open at either fake, no session
    live at Avaturn, no row still running."""
    upstream, realtime = site.upstream, site.realtime
    assert wait_until(lambda: realtime.open_connections == 0, TIMEOUT), realtime.connections
    assert wait_until(
        lambda: all(client.closed for client in upstream.engine_clients.values()), TIMEOUT
    ), [client.summary() for client in upstream.engine_clients.values()]
    assert wait_until(lambda: upstream.live_session_ids() == set(), TIMEOUT)
    assert not Session.objects.filter(
        status__in=[SessionStatus.STARTING, SessionStatus.LIVE, SessionStatus.ENDING]
    ).exists()


# ---------------------------------------------------------------------- helpers


def start_over_http(site: Site, user: Any) -> Session:
    """The visitor's Start: the real endpoint on the server, with a session cookie and CSRF."""
    client = Client()
    client.force_login(user)  # the session row is in the shared database
    csrf = _get_new_csrf_string()
    response = requests.post(
        site.server.http_url + LIST_URL,
        json={},
        cookies={"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf},
        headers={"X-CSRFToken": _mask_cipher_secret(csrf)},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201, (response.status_code, response.text, site.server.log())
    return Session.objects.get(session_id=response.json()["session_id"])


def engine_client(site: Site, row: Session) -> AvaturnEngineClient:
    """The client the fake connected for ``row``'s Avaturn session, once connected."""
    assert row.session_id is not None
    client = site.upstream.engine_client(row.session_id)
    assert client is not None, "the fake did not connect the engine"
    assert wait_until(lambda: client.connected or client.closed, TIMEOUT)
    assert client.connected, (client.connect_error, site.server.log())
    return client


def ended(site: Site, row: Session, timeout: float = TIMEOUT) -> Session:
    final = (SessionStatus.ENDED, SessionStatus.FAILED)
    assert wait_until(lambda: Session.objects.get(pk=row.pk).status in final, timeout), (
        list(Session.objects.filter(pk=row.pk).values("status", "end_reason", "end_detail")),
        site.server.log(),
    )
    return Session.objects.get(pk=row.pk)


def realtime_connection(site: Site) -> Any:
    assert wait_until(lambda: len(site.realtime.connections) == 1, TIMEOUT), site.server.log()
    (found,) = site.realtime.connections
    return found


def instructions(realtime_connection: Any) -> str:
    """The instructions the engine's ``session.update`` gave OpenAI."""
    assert wait_until(lambda: bool(realtime_connection.session_updates), TIMEOUT)
    update = realtime_connection.session_updates[0]
    return str(update.get("instructions"))


def closed_segments(client: AvaturnEngineClient) -> list[Any]:
    return [segment for segment in client.segments if not segment.open and segment.bytes]


# ---------------------------------------------------------------------- a conversation


def test_a_conversation_talks_runs_tools_and_ends_when_avaturn_closes(
    site: Site, user: Any
) -> None:
    site.realtime.script = Script(
        [
            Speak("Hello from the fake.", heard="Hi there.", after_audio_ms=100, audio_ms=300),
            CallTool("whoami", call_id="call_who", after_audio_ms=100, audio_ms=300),
            CallTool(
                "show_card",
                arguments='{"title": "Order 7"}',
                call_id="call_card",
                after_audio_ms=100,
                audio_ms=200,
            ),
        ]
    )
    row = start_over_http(site, user)
    client = engine_client(site, row)
    openai = realtime_connection(site)
    assert instructions(openai) == SERVER_INSTRUCTIONS

    # Both tools ran, in the server, as the session's user.
    assert wait_until(
        lambda: ToolCall.objects.filter(session=row, status=ToolCallStatus.OK).count() == 2,
        TIMEOUT,
    ), (list(ToolCall.objects.values()), site.server.log())
    assert wait_until(lambda: len(openai.function_call_outputs) == 2, TIMEOUT)
    outputs = {item["call_id"]: item["output"] for item in openai.function_call_outputs}
    who = json.loads(outputs["call_who"])["result"]
    assert (who["email"], who["session"]) == (user.email, row.pk)
    # The card went to the page through Avaturn's socket (sdk.message.send).
    assert wait_until(lambda: len(client.browser_messages) == 2, TIMEOUT)
    assert client.browser_messages[0] == {
        "type": "django_avaturn.message",
        "data": {"card": "Order 7", "n": 1},
    }

    # Audio both ways: the microphone reached OpenAI, the avatar's speech came back in
    # segments (three answers), by the protocol's rules.
    assert wait_until(lambda: len(closed_segments(client)) == 3, TIMEOUT), client.summary()
    assert client.audio_bytes_sent > 0 and openai.audio_bytes_appended > 0
    assert client.violations == []

    # The site speaks through the channel layer, from this process to the server's.
    services.say(row, "Your parcel is out for delivery.")
    assert wait_until(lambda: len(closed_segments(client)) == 4, TIMEOUT), client.summary()
    said = [event for event in openai.events if event["type"] == "response.create"]
    assert any("Your parcel is out for delivery." in json.dumps(event) for event in said)

    # Both sides of the transcript, written by the engine.
    lines = set(Transcript.objects.filter(session=row).values_list("role", "text"))
    assert {("user", "Hi there."), ("avatar", "Hello from the fake.")} <= lines

    # The visitor leaves: Avaturn closes the engine socket.
    client.close()
    row = ended(site, row)
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ENGINE_CLOSED)
    assert "Avaturn closed the engine socket (1000)" in row.end_detail
    assert wait_until(lambda: openai.closed_at is not None, TIMEOUT)
    assert openai.closed_by == "client"
    assert_nothing_running(site)


def test_openai_closing_ends_the_conversation(site: Site, user: Any) -> None:
    site.realtime.script = Script(
        [
            Speak("One moment.", after_audio_ms=60, audio_ms=200),
            Close(code=1011, reason="scripted end", after_audio_ms=100),
        ]
    )
    row = start_over_http(site, user)
    client = engine_client(site, row)
    row = ended(site, row, timeout=5)  # OpenAI closes ~0.2 s in
    assert (row.status, row.end_reason) == (SessionStatus.FAILED, EndReason.UPSTREAM_ERROR)
    assert "scripted end" in row.end_detail
    assert wait_until(lambda: client.closed, TIMEOUT)
    assert (client.closed_by, client.close_code) == ("engine", 4011)
    assert len(closed_segments(client)) == 1
    assert_nothing_running(site)


@pytest.mark.parametrize("avaturn_answers", ["terminated", "already_gone"])
def test_the_site_ending_it_in_another_process_closes_both_sockets(
    site: Site, user: Any, avaturn_answers: str
) -> None:
    """Started here (services.start_session), served there, ended from here.

    Avaturn's terminate closes its engine socket itself; "already gone" (a 404)
    does not, so only the channel layer's message can close it, from this
    process to the server's.
    """
    site.realtime.script = Script([Speak("Still here.", after_audio_ms=60, audio_ms=200)])
    started = services.start_session(user)
    row = started.session
    client = engine_client(site, row)
    openai = realtime_connection(site)
    # The start's plan crossed processes with the socket.
    assert instructions(openai) == TEST_INSTRUCTIONS
    assert wait_until(lambda: len(closed_segments(client)) == 1, TIMEOUT), client.summary()
    if avaturn_answers == "already_gone":
        site.upstream.fail(AVATURN_TERMINATE, status=404)
        # Quiet for longer than the channel layer's blocking read in Redis (5 s): the
        # consumer still listens (django_avaturn.W015).
        time.sleep(6)

    services.end_session(row, reason=EndReason.ADMIN)

    row = ended(site, row)
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    assert wait_until(lambda: client.closed, TIMEOUT), site.server.log()
    if avaturn_answers == "already_gone":
        assert (client.closed_by, client.close_code) == ("engine", 1000)
    assert wait_until(lambda: openai.closed_at is not None, TIMEOUT)
    # The engine's close added nothing to the site's end.
    row.refresh_from_db()
    assert row.end_reason == EndReason.ADMIN
    assert_nothing_running(site)


# ---------------------------------------------------------------------- a refusal


def test_a_wrong_secret_is_refused_before_accept_and_the_log_keeps_no_credential(
    site: Site, user: Any
) -> None:
    row = live(user, "sess-refused", engine="site")
    credentials = tokens.mint(row.pk)
    Session.objects.filter(pk=row.pk).update(engine_secret_hash=credentials.secret_hash)
    wrong = "not-" + credentials.secret
    url = tokens.socket_url(site.server.public_url, credentials.token)
    logged_before = len(site.server.log())

    refused = AvaturnEngineClient(url, {tokens.SECRET_HEADER: wrong}, microphone=None)
    with pytest.raises(Exception, match="403"):
        refused.start()
    assert refused.refused_status == 403

    def logged() -> str:
        return site.server.log()[logged_before:]

    assert wait_until(lambda: "Refused a site engine socket" in logged(), TIMEOUT), logged()
    assert f"X-Avaturn-Engine-Secret header of session row {row.pk} is wrong" in logged()
    for credential in (credentials.token, credentials.secret, wrong):
        assert credential not in logged()
    row.refresh_from_db()
    assert row.engine_connected_at is None  # a refusal does not use the token up
    assert site.realtime.connections == []
    Session.objects.filter(pk=row.pk).update(status=SessionStatus.ENDED)
    # Time for the server to have logged anything else about it.
    time.sleep(0.2)
    assert credentials.token not in site.server.log()


@pytest.mark.parametrize("path", ["/nope/", "/avaturn/sessions/", "/avaturn/engine/"])
def test_a_socket_to_a_path_with_no_route_is_refused_and_logs_no_error(
    site: Site, path: str
) -> None:
    """The documented router's ``websocket_not_found``: a 403 at the handshake, nothing logged.

    Without it Channels' router raises for a path it has no route for: the
    server answers 500 and logs an error with its traceback, every time.
    """
    logged_before = len(site.server.log())

    refused = AvaturnEngineClient(site.server.public_url + path, {}, microphone=None)
    with pytest.raises(Exception, match="403"):
        refused.start()

    assert refused.refused_status == 403
    # Neither server logs a refused handshake; an error is logged before its 500
    # is answered, and the pause covers a line logged late.
    time.sleep(0.2)
    logged = site.server.log()[logged_before:]
    for error in ("Traceback", "ERROR", "No route found", "Exception in ASGI application"):
        assert error not in logged, logged
    assert site.realtime.connections == []


# ---------------------------------------------------------------------- shutdown


def test_a_server_shutting_down_ends_its_conversations(
    site: Site, user: Any, settings: Any, tmp_path: Path
) -> None:
    """SIGTERM with a conversation running (a deploy): the row ends, nothing runs on.

    The signal comes within a second of the socket's connect: daphne 4.2's
    shutdown then skips cancelling its applications (its ``kill_all_applications``
    raises ``KeyError`` on the upgrade request's entry, reaped only each second),
    and the row is ended at the process's exit instead (``engine.shutdown``).
    """
    # A server of its own: this one stops, the module's serves the other tests.
    port = closed_port()
    public_url = f"ws://127.0.0.1:{port}"
    avaturn = _avaturn(site.upstream, site.realtime, public_url)
    server = EngineServer(
        site.server.server,
        port=port,
        database=database_settings(connection.settings_dict),
        avaturn={**avaturn, "INSTRUCTIONS": SERVER_INSTRUCTIONS},
        prefix=site.prefix,
        log_path=tmp_path / "server.log",
    )
    try:
        settings.AVATURN = {
            **settings.AVATURN,
            "SITE_ENGINE": {**settings.AVATURN["SITE_ENGINE"], "PUBLIC_URL": public_url},
        }
        site.realtime.script = Script([Speak("A long answer.", after_audio_ms=60, audio_ms=5000)])
        started = services.start_session(user)
        row = started.session
        engine_client(site, row)
        realtime_connection(site)
        server.stop()
        row = ended(site, row)
        assert row.end_reason == EndReason.ENGINE_CLOSED, (row.end_detail, server.log())
        if site.server.server == "uvicorn":
            assert row.end_detail.startswith("The server shut down (1012)"), row.end_detail
        assert_nothing_running(site)
        # It exited of itself (uvicorn re-raises SIGTERM once drained), not killed.
        assert server.proc.returncode in (0, -signal.SIGTERM), server.log()
    finally:
        server.stop()
