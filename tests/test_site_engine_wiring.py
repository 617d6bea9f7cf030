"""The site engine's wiring: its start, its token and secret, the channel layer, the
messages endpoint, say(), and its system checks. The socket itself: test_site_engine_socket."""

from __future__ import annotations

import sys
from importlib import metadata
from typing import Any

import pytest
from django.core import signing
from django.core.cache import caches
from django.core.checks import run_checks
from rest_framework.test import APIClient

from django_avaturn import services
from django_avaturn.engine import layer, tokens
from django_avaturn.exceptions import NotConfigured, SessionNotLive
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions import transitions
from django_avaturn.testing import AVATURN_CREATE, FakeUpstream
from tests.e2e.engine_servers import forget_prefix, new_prefix
from tests.helpers import (
    LIST_URL,
    AvaturnOverrides,
    closed_port,
    csrf_post,
    live,
    redis_reachable,
    redis_url,
    run_coroutine,
)
from tests.live_fake import csrf_json

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC_URL = "wss://avatar.example.com/app"
IN_MEMORY = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
# As docs/site-engine.md configures it (never connected to here).
REDIS_LAYER = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [{"address": "redis://redis.example.com:6379/0", "socket_timeout": 10}]
        },
    }
}


def _site(avaturn: AvaturnOverrides, **options: Any) -> None:
    avaturn(ENGINE="site", SITE_ENGINE={"PUBLIC_URL": PUBLIC_URL, **options})


def _listen(row_pk: int) -> str:
    """A channel in the row's group, as the consumer's would be."""

    async def join() -> str:
        channel_layer = layer.get_layer()
        name: str = await channel_layer.new_channel()
        await channel_layer.group_add(layer.group_name(row_pk), name)
        return name

    return run_coroutine(join())


def _received(channel: str) -> dict[str, Any]:
    async def receive() -> dict[str, Any]:
        message: dict[str, Any] = await layer.get_layer().receive(channel)
        return message

    return run_coroutine(receive())


def _nothing_waiting(channel: str) -> bool:
    queue = layer.get_layer().channels.get(channel)
    return queue is None or queue.empty()


# ---------------------------------------------------------------------- the start


def test_a_start_points_avaturn_at_the_sites_socket_with_a_token_and_a_hashed_secret(
    live_fake: FakeUpstream, api_client: APIClient, avaturn: AvaturnOverrides
) -> None:
    _site(avaturn)
    response = csrf_json(api_client, "post", LIST_URL, {})
    assert response.status_code == 201, response.content
    row = Session.objects.get()
    assert (row.engine, row.status) == ("site", SessionStatus.LIVE)
    (create,) = live_fake.requests_for(AVATURN_CREATE)
    engine = create.json["conversation_engine"]
    assert engine["type"] == "external"
    assert engine["audio"] == {"user": {"sample_rate": 24000}}
    prefix = PUBLIC_URL + "/avaturn/engine/"
    assert engine["url"].startswith(prefix) and engine["url"].endswith("/")
    token = engine["url"][len(prefix) : -1]
    assert tokens.session_pk(token) == row.pk
    secret = engine["headers"]["X-Avaturn-Engine-Secret"]
    # Only the hash is kept, and it is the secret's.
    assert len(secret) >= 40 and secret not in repr(row.__dict__)
    assert row.engine_secret_hash == tokens.hash_secret(secret)
    assert tokens.secret_matches(secret, row.engine_secret_hash)
    assert row.engine_connected_at is None
    # Neither leaves the server in the start's answer.
    assert secret not in response.content.decode() and token not in response.content.decode()
    # What the socket opens OpenAI with is on the row.
    assert row.engine_plan is not None
    assert row.engine_plan["realtime_session"]["model"] == "gpt-realtime"


def test_each_start_has_its_own_token_and_secret(
    live_fake: FakeUpstream, api_client: APIClient, avaturn: AvaturnOverrides
) -> None:
    _site(avaturn)
    avaturn(MAX_LIVE_SESSIONS_PER_USER=2)
    for _ in range(2):
        assert csrf_json(api_client, "post", LIST_URL, {}).status_code == 201
    first, second = (r.json["conversation_engine"] for r in live_fake.requests_for(AVATURN_CREATE))
    assert first["url"] != second["url"]
    assert first["headers"] != second["headers"]


def test_the_hook_may_choose_the_tools_and_the_instructions(
    live_fake: FakeUpstream, api_client: APIClient, avaturn: AvaturnOverrides
) -> None:
    _site(avaturn)
    avaturn(SESSION_CONFIG_HOOK="tests.test_site_engine_wiring.hook")
    assert csrf_json(api_client, "post", LIST_URL, {}).status_code == 201
    plan = Session.objects.get().engine_plan
    assert plan is not None
    assert plan["tools"] == []
    assert plan["realtime_session"]["instructions"] == "Only about orders."


def hook(request: Any, config: str | None) -> dict[str, Any]:
    return {"instructions": "Only about orders.", "site_engine": {"TOOLS": []}}


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"PUBLIC_URL": None}, "PUBLIC_URL"),
        ({"PUBLIC_URL": "ws://avatar.example.com"}, "wss://"),
        ({"TOOLS": ["tests.no_such_tools_module"]}, "tests.no_such_tools_module"),
    ],
)
def test_a_start_without_what_the_engine_needs_is_503_and_spends_nothing(
    live_fake: FakeUpstream,
    api_client: APIClient,
    avaturn: AvaturnOverrides,
    options: dict[str, Any],
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _site(avaturn, **options)
    response = csrf_json(api_client, "post", LIST_URL, {})
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "not_configured"
    # The page is told only that; the log says what.
    assert why in caplog.text
    assert live_fake.requests_for(AVATURN_CREATE) == []
    assert not Session.objects.exists()


def test_without_channels_the_start_is_503(
    live_fake: FakeUpstream,
    api_client: APIClient,
    avaturn: AvaturnOverrides,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _site(avaturn)
    monkeypatch.setitem(sys.modules, "channels", None)  # as if not installed
    response = csrf_json(api_client, "post", LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert "django-avaturn[engine]" in caplog.text
    assert not Session.objects.exists()


# ---------------------------------------------------------------------- the token


def test_a_token_names_its_row_until_it_expires() -> None:
    credentials = tokens.mint(42)
    assert tokens.session_pk(credentials.token, max_age=60) == 42
    with pytest.raises(tokens.Refused, match="expired"):
        tokens.session_pk(credentials.token, max_age=-1)
    forged = signing.dumps({"s": 42}, salt="another.salt", compress=False)
    with pytest.raises(tokens.Refused, match="signature"):
        tokens.session_pk(forged, max_age=60)
    with pytest.raises(tokens.Refused, match="signature"):
        tokens.session_pk(credentials.token[:-2] + "xx", max_age=60)
    # Neither credential shows in a repr.
    assert credentials.token not in repr(credentials)
    assert credentials.secret not in repr(credentials)


def test_the_secret_is_compared_with_its_hash() -> None:
    credentials = tokens.mint(1)
    stored = credentials.secret_hash
    assert tokens.secret_matches(credentials.secret, stored)
    assert not tokens.secret_matches(credentials.secret + "x", stored)
    assert not tokens.secret_matches(None, stored)
    assert not tokens.secret_matches(credentials.secret, "")
    headers = [(b"host", b"x"), (b"x-avaturn-engine-secret", credentials.secret.encode())]
    assert tokens.secret_from_headers(headers) == credentials.secret
    assert tokens.secret_from_headers([(b"x-avaturn-engine-secret", b"\xff")]) is None


def test_a_row_is_marked_connected_once_and_only_while_starting_or_live(user: Any) -> None:
    row = live(user, "sess-1", engine="site")
    assert transitions.mark_engine_connected(row.pk)
    assert not transitions.mark_engine_connected(row.pk)
    row.refresh_from_db()
    assert row.engine_connected_at is not None
    starting = Session.objects.create(user=user, status=SessionStatus.STARTING, engine="site")
    assert transitions.mark_engine_connected(starting.pk)
    ended = live(user, "sess-2", engine="site", status=SessionStatus.ENDED)
    assert not transitions.mark_engine_connected(ended.pk)
    other = live(user, "sess-3", engine="openai-realtime")
    assert not transitions.mark_engine_connected(other.pk)


# ---------------------------------------------------------------------- ends reach the engine


def test_an_end_by_the_site_tells_the_engine_through_the_layer(
    upstream: Any, user: Any, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    other = live(user, "sess-2", engine="openai-realtime")
    channel, other_channel = _listen(row.pk), _listen(other.pk)
    services.end_session(row, reason=EndReason.ADMIN)
    assert _received(channel) == {"type": "avaturn.engine.end", "reason": "admin"}
    services.end_session(other, reason=EndReason.ADMIN)
    assert _nothing_waiting(other_channel)


def test_a_bulk_end_tells_each_site_engine(upstream: Any, user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    rows = [live(user, f"sess-{n}", engine="site") for n in range(3)]
    channels = [_listen(row.pk) for row in rows]
    services.end_sessions(Session.objects.all(), reason=EndReason.SHUTDOWN)
    for channel in channels:
        assert _received(channel)["type"] == "avaturn.engine.end"


def test_an_end_without_a_channel_layer_still_ends(upstream: Any, user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {}
    row = live(user, "sess-1", engine="site")
    services.end_session(row, reason=EndReason.CLIENT)
    row.refresh_from_db()
    assert row.status == SessionStatus.ENDED


# ---------------------------------------------------------------------- say()


def test_say_reaches_the_site_engine_through_the_layer(user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    channel = _listen(row.pk)
    assert services.say(row, "Your order has shipped.")
    assert _received(channel) == {"type": "avaturn.engine.say", "text": "Your order has shipped."}


def test_say_on_an_ended_site_session_is_refused(user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site", status=SessionStatus.ENDED)
    channel = _listen(row.pk)
    with pytest.raises(SessionNotLive):
        services.say(row, "Hello")
    assert _nothing_waiting(channel)


def test_say_without_a_channel_layer_is_not_configured(user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {}
    row = live(user, "sess-1", engine="site")
    with pytest.raises(NotConfigured):
        services.say(row, "Hello")


# ---------------------------------------------------------------------- POST .../messages/


def _messages(session_id: str) -> str:
    return f"/avaturn/sessions/{session_id}/messages/"


def test_the_owners_page_sends_its_conversation_a_message_through_the_layer(
    api_client: APIClient, user: Any, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    channel = _listen(row.pk)
    data = {"type": "card", "title": "Order 7", "items": [1, 2]}
    response = csrf_post(api_client, _messages("sess-1"), {"data": data})
    assert response.status_code == 204, response.content
    assert _received(channel) == {"type": "avaturn.engine.page", "data": data, "respond": False}
    response = csrf_post(api_client, _messages("sess-1"), {"data": data, "respond": True})
    assert response.status_code == 204, response.content
    assert _received(channel) == {"type": "avaturn.engine.page", "data": data, "respond": True}


def test_respond_must_be_a_boolean(api_client: APIClient, user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    channel = _listen(row.pk)
    response = csrf_post(api_client, _messages("sess-1"), {"data": {}, "respond": "maybe"})
    assert response.status_code == 400
    assert _nothing_waiting(channel)


def test_another_users_session_is_404_and_gets_nothing(
    api_client: APIClient, other_user: Any, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(other_user, "sess-theirs", engine="site")
    channel = _listen(row.pk)
    response = csrf_post(api_client, _messages("sess-theirs"), {"data": {"a": 1}})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert _nothing_waiting(channel)


def test_anonymous_and_csrf_less_posts_are_403(user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    channel = _listen(row.pk)
    anonymous = APIClient(enforce_csrf_checks=True)
    assert csrf_post(anonymous, _messages("sess-1"), {"data": {}}).status_code == 403
    signed_in = APIClient(enforce_csrf_checks=True)
    signed_in.force_login(user)
    response = signed_in.post(_messages("sess-1"), {"data": {}}, format="json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert _nothing_waiting(channel)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"status": SessionStatus.ENDED}, "session_ended"),
        ({"status": SessionStatus.ENDING}, "session_ended"),
        ({"engine": "openai-realtime"}, "engine_takes_no_messages"),
    ],
)
def test_a_session_not_live_or_not_the_site_engines_is_409(
    api_client: APIClient, user: Any, settings: Any, fields: dict[str, Any], code: str
) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", **{"engine": "site", **fields})
    channel = _listen(row.pk)
    response = csrf_post(api_client, _messages("sess-1"), {"data": {"a": 1}})
    assert (response.status_code, response.json()["code"]) == (409, code)
    assert _nothing_waiting(channel)


@pytest.mark.parametrize(
    "body", [{}, {"data": "text"}, {"data": [1]}, {"data": {}, "extra": 1}, {"data": None}]
)
def test_a_body_that_is_not_a_data_object_is_400(
    api_client: APIClient, user: Any, settings: Any, body: Any
) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    live(user, "sess-1", engine="site")
    response = csrf_post(api_client, _messages("sess-1"), body)
    assert response.status_code == 400, response.content


@pytest.mark.parametrize("data", [{"x": "\ud800"}, {"\udfff": 1}, {"x": [{"y": "a\udc00"}]}])
def test_a_lone_surrogate_is_400_not_500(
    api_client: APIClient, user: Any, settings: Any, data: dict[str, Any]
) -> None:
    """JSON's escapes can spell a lone surrogate, which no encoding holds: the size's
    measure and the layer's msgpack would fail on it."""
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    channel = _listen(row.pk)
    response = csrf_post(api_client, _messages("sess-1"), {"data": data})
    assert (response.status_code, response.json()["code"]) == (400, "invalid")
    assert "lone surrogate" in response.content.decode()
    assert _nothing_waiting(channel)


def test_a_message_too_large_is_413(api_client: APIClient, user: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    row = live(user, "sess-1", engine="site")
    channel = _listen(row.pk)
    at_limit = {"t": "x" * (layer.PAGE_MESSAGE_MAX_BYTES - len('{"t":""}'))}
    assert layer.message_size(at_limit) == layer.PAGE_MESSAGE_MAX_BYTES
    assert csrf_post(api_client, _messages("sess-1"), {"data": at_limit}).status_code == 204
    assert _received(channel)["data"] == at_limit
    too_large = {"t": at_limit["t"] + "x"}
    response = csrf_post(api_client, _messages("sess-1"), {"data": too_large})
    assert (response.status_code, response.json()["code"]) == (413, "message_too_large")
    assert _nothing_waiting(channel)


def _nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(depth):
        data = {"a": data}
    return data


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"n": 2**64}, "An integer is out of range."),
        ({"n": [-(2**63) - 1]}, "An integer is out of range."),
        (_nested(600), "Nested deeper than 32 levels."),
    ],
)
def test_data_no_channel_layer_can_carry_is_400_not_503(
    api_client: APIClient, user: Any, settings: Any, data: dict[str, Any], problem: str
) -> None:
    """channels-redis packs with msgpack, which refuses such values: the caller's error,
    not the layer failing (and no warning in the site's log)."""
    if not redis_reachable():
        pytest.skip(f"no Redis at {redis_url()}")
    prefix = new_prefix()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [redis_url()], "prefix": prefix},
        }
    }
    live(user, "sess-1", engine="site")
    try:
        response = csrf_post(api_client, _messages("sess-1"), {"data": data})
        assert (response.status_code, response.json()["code"]) == (400, "invalid")
        assert problem in response.content.decode()
        # At the limits, it travels.
        edges = {"big": 2**64 - 1, "small": -(2**63), "deep": _nested(31)}
        assert csrf_post(api_client, _messages("sess-1"), {"data": edges}).status_code == 204
    finally:
        forget_prefix(prefix)


def test_messages_are_throttled_per_user(
    api_client: APIClient, user: Any, settings: Any, avaturn: AvaturnOverrides
) -> None:
    settings.CHANNEL_LAYERS = IN_MEMORY
    caches["default"].clear()
    avaturn(MESSAGE_THROTTLE_RATE="2/minute")
    live(user, "sess-1", engine="site")
    for _ in range(2):
        assert csrf_post(api_client, _messages("sess-1"), {"data": {}}).status_code == 204
    response = csrf_post(api_client, _messages("sess-1"), {"data": {}})
    assert (response.status_code, response.json()["code"]) == (429, "throttled")
    assert int(response["Retry-After"]) >= 1


def test_a_channel_layer_that_cannot_be_reached_is_503_not_500(
    api_client: APIClient, user: Any, settings: Any
) -> None:
    pytest.importorskip("channels_redis")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{closed_port()}/0"]},
        }
    }
    live(user, "sess-1", engine="site")
    response = csrf_post(api_client, _messages("sess-1"), {"data": {}})
    assert (response.status_code, response.json()["code"]) == (503, "unavailable")


def test_without_a_channel_layer_a_message_is_503(
    api_client: APIClient, user: Any, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = {}
    live(user, "sess-1", engine="site")
    response = csrf_post(api_client, _messages("sess-1"), {"data": {}})
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")


# ---------------------------------------------------------------------- checks


def _ids() -> list[str]:
    return sorted(m.id for m in run_checks(databases=[]) if m.id.startswith("django_avaturn."))


def test_the_site_engine_needs_its_public_url_e007(
    avaturn: AvaturnOverrides, settings: Any
) -> None:
    settings.CHANNEL_LAYERS = REDIS_LAYER
    avaturn(ENGINE="site")
    assert _ids() == ["django_avaturn.E007"]
    avaturn(SITE_ENGINE={"PUBLIC_URL": "wss://avatar.example.com"})
    assert _ids() == []


@pytest.mark.parametrize(("debug", "expected"), [(False, ["django_avaturn.E008"]), (True, [])])
def test_a_ws_public_url_outside_debug_is_e008(
    avaturn: AvaturnOverrides, settings: Any, debug: bool, expected: list[str]
) -> None:
    settings.DEBUG = debug
    avaturn(SITE_ENGINE={"PUBLIC_URL": "ws://avatar.example.com"})
    assert _ids() == expected


def test_the_site_engine_without_channels_is_e009(
    avaturn: AvaturnOverrides, monkeypatch: pytest.MonkeyPatch
) -> None:
    _site(avaturn)
    monkeypatch.setitem(sys.modules, "channels", None)
    assert _ids() == ["django_avaturn.E009"]


@pytest.mark.parametrize(
    ("layers", "debug", "expected"),
    [
        (IN_MEMORY, False, ["django_avaturn.W013"]),
        (IN_MEMORY, True, []),
        ({}, False, ["django_avaturn.W014"]),
        (REDIS_LAYER, False, []),
    ],
)
def test_the_channel_layer_checks(
    avaturn: AvaturnOverrides,
    settings: Any,
    layers: dict[str, Any],
    debug: bool,
    expected: list[str],
) -> None:
    settings.DEBUG = debug
    settings.CHANNEL_LAYERS = layers
    _site(avaturn)
    assert _ids() == expected
    avaturn(ENGINE="openai-realtime")
    assert _ids() == []


REDIS_PY_8 = int(metadata.version("redis").split(".")[0]) >= 8


@pytest.mark.skipif(not REDIS_PY_8, reason="redis-py 8's default read timeout only")
@pytest.mark.parametrize(
    ("hosts", "warned"),
    [
        (None, True),  # channels_redis's default host
        (["redis://r:6379/0"], True),
        ([("r", 6379)], True),
        ([{"address": "redis://r:6379/0"}], True),
        ([{"address": "redis://r:6379/0", "socket_timeout": 5}], True),
        ([{"address": "redis://r:6379/0", "socket_timeout": 10}, "redis://s:6379/0"], True),
        ([{"address": "redis://r:6379/0", "socket_timeout": 10}], False),
        ([{"address": "redis://r:6379/0", "socket_timeout": None}], False),
        ([{"host": "r", "port": 6379, "socket_timeout": 30}], False),
        (["redis://r:6379/0?socket_timeout=10"], False),
        (["redis://r:6379/0?socket_timeout=2"], True),
    ],
)
def test_a_redis_layer_whose_reads_time_out_before_its_blocking_read_is_w015(
    avaturn: AvaturnOverrides, settings: Any, hosts: list[Any] | None, warned: bool
) -> None:
    """redis-py 8 times reads out after 5 s; channels_redis blocks 5 s in Redis (BZPOPMIN).

    tests/e2e/test_site_engine_servers shows the consumer dying of it under a real server.
    """
    config = {} if hosts is None else {"CONFIG": {"hosts": hosts}}
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", **config}
    }
    _site(avaturn)
    assert _ids() == (["django_avaturn.W015"] if warned else [])
    avaturn(ENGINE="openai-realtime")
    assert _ids() == []


def test_a_page_cannot_write_a_site_engine_sessions_transcript(
    api_client: APIClient, user: Any, avaturn: AvaturnOverrides
) -> None:
    """The engine records both sides itself; a line posted by the page would be a forgery."""
    avaturn(TRANSCRIPTS_ENABLED=True)
    row = live(user, "sess-1", engine="site")
    response = csrf_post(
        api_client, "/avaturn/sessions/sess-1/transcripts/", {"role": "avatar", "text": "Hi"}
    )
    assert (response.status_code, response.json()["code"]) == (409, "transcript_from_engine")
    assert not row.transcripts.exists()
