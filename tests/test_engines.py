"""Conversation engines: openai-realtime, cartesia, external and text-echo, end to end.

Every start goes through the API, the real clients and the loopback fake:
what Avaturn's create receives is read from the fake's records.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from rest_framework.test import APIClient

from django_avaturn.exceptions import NotConfigured
from django_avaturn.models import Session, SessionStatus
from django_avaturn.sessions.plan import SessionPlan, build_plan
from django_avaturn.testing import (
    AVATURN_CREATE,
    CARTESIA_ACCESS_TOKEN,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from tests.helpers import LIST_URL, AvaturnOverrides
from tests.live_fake import csrf_json

pytestmark = pytest.mark.django_db(transaction=True)

HEADER_SECRET = "engine-shared-secret-0123456789"


@pytest.fixture
def client(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _cartesia(fake: FakeUpstream, avaturn: AvaturnOverrides, **extra: Any) -> None:
    avaturn(ENGINE="cartesia", CARTESIA={**fake.cartesia_settings(), **extra})


def _start(client: APIClient, body: Any = None) -> Any:
    return csrf_json(client, "post", LIST_URL, body if body is not None else {})


def _create_body(fake: FakeUpstream) -> dict[str, Any]:
    (create,) = fake.requests_for(AVATURN_CREATE)
    body: dict[str, Any] = create.json
    return body


def _row_text(row: Session) -> str:
    """Every column of the row, as text: where a stored credential would show."""
    return repr([getattr(row, field.attname) for field in Session._meta.concrete_fields])


# ---------------------------------------------------------------------- the default


def test_the_default_engine_is_openai_realtime_and_the_row_says_so(
    live_fake: FakeUpstream, client: APIClient
) -> None:
    response = _start(client)
    assert response.status_code == 201, response.content
    row = Session.objects.get()
    assert row.engine == "openai-realtime"
    engine = _create_body(live_fake)["conversation_engine"]
    assert engine["type"] == "openai-realtime"
    assert engine["client_secret"] in live_fake.secrets_issued
    assert response.json()["expires_at"] is not None
    assert response.json()["engine"] == "openai-realtime"  # the widget's transcript switch


# ---------------------------------------------------------------------- cartesia


def test_a_cartesia_start_mints_a_token_per_start_and_never_stores_it(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides
) -> None:
    _cartesia(live_fake, avaturn, AGENT_ID="agent_abc", TOKEN_TTL=120)
    response = _start(client)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["expires_at"] is None  # bounded by max_duration, not by the token
    assert body["engine"] == "cartesia"

    (mint,) = live_fake.requests_for(CARTESIA_ACCESS_TOKEN)
    assert mint.headers["authorization"] == "Bearer sk_car_fake-cartesia-key"
    assert mint.headers["cartesia-version"] == "2025-04-16"
    assert mint.json == {"grants": {"agent": True}, "expires_in": 120}
    assert live_fake.requests_for(OPENAI_CLIENT_SECRET) == []

    engine = _create_body(live_fake)["conversation_engine"]
    (token,) = live_fake.tokens_issued
    assert engine == {"type": "cartesia", "access_token": token, "agent_id": "agent_abc"}
    row = Session.objects.get()
    assert (row.engine, row.status, row.model, row.voice) == ("cartesia", "live", "", "")
    assert token not in _row_text(row)
    assert token not in response.content.decode()

    # A second start mints a second token.
    assert _start(client).status_code == 201
    assert len(live_fake.tokens_issued) == 2


def test_the_cartesia_key_falls_back_to_the_environment(
    live_fake: FakeUpstream,
    client: APIClient,
    avaturn: AvaturnOverrides,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    avaturn(ENGINE="cartesia", CARTESIA={"API_URL": live_fake.url, "AGENT_ID": "agent_abc"})
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    response = _start(client)
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert "CARTESIA_API_KEY" in caplog.text  # (the API says only "not configured")
    assert not Session.objects.exists()  # refused before a slot was reserved
    assert live_fake.requests == []

    monkeypatch.setenv("CARTESIA_API_KEY", "sk_car_fake-cartesia-key\n")
    assert _start(client).status_code == 201
    assert Session.objects.get().engine == "cartesia"


def test_cartesia_without_an_agent_id_is_refused_before_anything_is_spent(
    live_fake: FakeUpstream,
    client: APIClient,
    avaturn: AvaturnOverrides,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _cartesia(live_fake, avaturn)
    response = _start(client)
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert "AGENT_ID" in caplog.text  # (the API says only "not configured")
    assert not Session.objects.exists()
    assert live_fake.requests == []


def choose_by_user(request: Any, config: str | None) -> dict[str, Any]:
    """A hook that gives staff a Cartesia agent and everyone else the default engine."""
    if request is not None and request.user.is_staff:
        return {"engine": "cartesia", "cartesia": {"AGENT_ID": "agent_staff"}}
    return {}


def test_the_hook_chooses_the_engine_and_its_agent_per_user(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(SESSION_CONFIG_HOOK=choose_by_user, CARTESIA=live_fake.cartesia_settings())
    assert _start(client).status_code == 201
    assert Session.objects.get().engine == "openai-realtime"

    user.is_staff = True
    user.save()
    assert _start(client).status_code == 201
    newest = Session.objects.order_by("-pk").first()
    assert newest is not None and newest.engine == "cartesia"
    creates = live_fake.requests_for(AVATURN_CREATE)
    assert creates[-1].json["conversation_engine"]["agent_id"] == "agent_staff"


def test_a_value_longer_than_the_row_records_is_refused_before_anything_is_spent(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides
) -> None:
    """On PostgreSQL the row would be refused: a database error (503 "unavailable")."""
    avaturn(SESSION_CONFIG_HOOK=lambda request, config: {"model": "m" * 101})
    response = _start(client)
    assert response.status_code == 503
    assert response.json()["code"] == "not_configured"
    assert live_fake.requests == []
    assert not Session.objects.exists()
    avaturn(SESSION_CONFIG_HOOK=lambda request, config: {"model": "m" * 100})
    assert _start(client).status_code == 201


def test_the_request_body_can_never_choose_the_engine(
    live_fake: FakeUpstream, client: APIClient
) -> None:
    response = _start(client, {"engine": "cartesia", "agent_id": "someone-elses"})
    assert response.status_code == 400
    assert live_fake.requests == []
    assert not Session.objects.exists()


@pytest.mark.parametrize(
    "answer",
    [
        {"engine": "nonsense"},
        {"engine": "cartesia", "cartesia": {"API_KEY": "sk_car_not_from_a_hook"}},
        {"engine": "external", "external_engine": "wss://example.invalid/engine"},
        # Sent to Avaturn as str() of it before, and recorded so.
        {"avatar_id": {"x": 1}},
        {"avatar_id": 7},
        # Options for an engine other than the chosen one are checked all the same.
        {"engine": "cartesia", "cartesia": {"AGENT_ID": "a"}, "instructions": 12345},
        {"engine": "cartesia", "cartesia": {"AGENT_ID": "a"}, "realtime_session": "junk"},
        {"engine": "text-echo", "text_echo": {"VOICE_ID": "v"}, "cartesia": {"AGENT": "typo"}},
        {"external_engine": {"URL": "http://not-a-socket.example.com"}},
        {"text_echo": {"VOICE_ID": 5}},
        # Longer than the session row records (PostgreSQL would refuse the row).
        {"avatar_id": "a" * 256},
        {"model": "gpt-realtime-" + "x" * 88},
        {"realtime_session": {"audio": {"output": {"voice": "v" * 51}}}},
        {"engine": "text-echo", "text_echo": {"VOICE_ID": "v" * 51}},
    ],
)
def test_a_hook_answer_outside_the_contract_is_not_configured(
    avaturn: AvaturnOverrides, answer: dict[str, Any]
) -> None:
    avaturn(SESSION_CONFIG_HOOK=lambda request, config: answer)
    with pytest.raises(NotConfigured):
        build_plan()


# ---------------------------------------------------------------------- external


def test_an_external_engine_gets_its_url_headers_and_rate_and_no_row_keeps_the_secret(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides
) -> None:
    avaturn(
        ENGINE="external",
        EXTERNAL_ENGINE={
            "URL": "wss://engine.example.com/avaturn",
            "HEADERS": {"X-Engine-Secret": HEADER_SECRET},
            "SAMPLE_RATE": 16000,
        },
    )
    response = _start(client)
    assert response.status_code == 201, response.content
    engine = _create_body(live_fake)["conversation_engine"]
    assert engine == {
        "type": "external",
        "url": "wss://engine.example.com/avaturn",
        "headers": {"X-Engine-Secret": HEADER_SECRET},
        "audio": {"user": {"sample_rate": 16000}},
    }
    row = Session.objects.get()
    assert row.engine == "external"
    assert HEADER_SECRET not in _row_text(row)
    assert HEADER_SECRET not in response.content.decode()
    assert HEADER_SECRET not in repr(build_plan())


def test_an_external_hook_answers_the_socket_per_start(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides
) -> None:
    seen: list[tuple[Any, Any]] = []

    def per_session(request: Any, plan: SessionPlan) -> dict[str, Any]:
        seen.append((request, plan))
        return {
            "url": f"wss://agents.example.com/s/{len(seen)}",
            "headers": {"Authorization": "Bearer one-time"},
        }

    avaturn(ENGINE="external", EXTERNAL_ENGINE={"HOOK": per_session})
    assert _start(client).status_code == 201
    assert _start(client).status_code == 201
    urls = [r.json["conversation_engine"]["url"] for r in live_fake.requests_for(AVATURN_CREATE)]
    assert urls == ["wss://agents.example.com/s/1", "wss://agents.example.com/s/2"]
    assert all(plan.engine == "external" and request is not None for request, plan in seen)


def test_the_session_hooks_external_headers_replace_the_settings_whole(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides
) -> None:
    """A hook sending a start to another engine does not pass on the setting's secret."""
    avaturn(
        ENGINE="external",
        EXTERNAL_ENGINE={
            "URL": "wss://engine.example.com/a",
            "HEADERS": {"X-Engine-Secret": HEADER_SECRET},
        },
        SESSION_CONFIG_HOOK=lambda request, config: {
            "external_engine": {
                "URL": "wss://tenant.example.net/b",
                "HEADERS": {"X-Tenant-Token": "per-tenant"},
            }
        },
    )
    assert _start(client).status_code == 201
    engine = _create_body(live_fake)["conversation_engine"]
    assert (engine["url"], engine["headers"]) == (
        "wss://tenant.example.net/b",
        {"X-Tenant-Token": "per-tenant"},
    )


class _AnswerThatRaisesWhenRead(dict):  # type: ignore[type-arg]
    def __iter__(self) -> Any:
        raise KeyError("a mapping of the site's own, broken")


def _hook_raising(request: Any, plan: SessionPlan) -> dict[str, Any]:
    raise RuntimeError(f"platform said no to {HEADER_SECRET}")


def _hook_answering_junk(request: Any, plan: SessionPlan) -> dict[str, Any]:
    return _AnswerThatRaisesWhenRead(url="wss://x.example.com")


@pytest.mark.parametrize("hook", [_hook_raising, _hook_answering_junk])
def test_an_external_hook_that_fails_reserves_nothing_and_ends_nothing(
    live_fake: FakeUpstream,
    client: APIClient,
    avaturn: AvaturnOverrides,
    caplog: pytest.LogCaptureFixture,
    hook: Any,
) -> None:
    """The site's code is asked before the reservation: its failure (or its answer's)
    takes no slot and ends no session, not even the one a start would replace."""
    avaturn(ENGINE="external", EXTERNAL_ENGINE={"URL": "wss://engine.example.com/a"})
    running = _start(client).json()["session_id"]
    avaturn(
        ENGINE="external",
        EXTERNAL_ENGINE={"HOOK": hook, "HEADERS": {"X-Engine-Secret": HEADER_SECRET}},
        ON_SESSION_LIMIT="end_oldest",
    )
    caplog.set_level(logging.DEBUG)
    response = _start(client)
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    # The session it would have replaced runs on, and no row was reserved for it.
    assert list(Session.objects.values_list("session_id", "status")) == [
        (running, SessionStatus.LIVE)
    ]
    assert live_fake.live_session_ids() == {running}
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 1
    # Logged with its traceback, so the site can fix it; the key scrubbed out of it.
    record = next(r for r in caplog.records if "['HOOK']" in r.getMessage())
    assert "raised" in record.getMessage()
    assert "Traceback (most recent call last)" in logging.Formatter().format(record)
    assert HEADER_SECRET not in response.content.decode() + caplog.text


def test_a_slow_external_hook_holds_no_slot_while_it_runs(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides
) -> None:
    """No row exists while the hook runs, so the expiry command's sweep of starts that
    never finished has nothing to free under the cap meanwhile."""
    rows_while_asked: list[int] = []

    def slow(request: Any, plan: SessionPlan) -> dict[str, Any]:
        rows_while_asked.append(Session.objects.count())
        return {"url": "wss://engine.example.com/slow"}

    avaturn(ENGINE="external", EXTERNAL_ENGINE={"HOOK": slow}, ON_SESSION_LIMIT="refuse")
    assert _start(client).status_code == 201
    assert rows_while_asked == [0]


@pytest.mark.parametrize("scheme", ["ws", "WS", "Ws"])
@pytest.mark.parametrize(("debug", "status"), [(False, 503), (True, 201)])
def test_a_ws_url_is_refused_outside_debug_in_any_case_and_sent_in_lower_case(
    live_fake: FakeUpstream,
    client: APIClient,
    avaturn: AvaturnOverrides,
    settings: Any,
    debug: bool,
    status: int,
    scheme: str,
) -> None:
    """Unencrypted, from the settings or the engine's hook; a scheme is read in any case."""
    settings.DEBUG = debug
    url = f"{scheme}://localhost:8001/Engine"
    avaturn(ENGINE="external", EXTERNAL_ENGINE={"URL": url})
    response = _start(client)
    assert response.status_code == status, response.content
    assert Session.objects.exists() is debug
    avaturn(EXTERNAL_ENGINE={"HOOK": lambda request, plan: {"url": url}})
    assert _start(client).status_code == status
    sent = [
        request.json["conversation_engine"]["url"]
        for request in live_fake.requests_for(AVATURN_CREATE)
    ]
    assert sent == (["ws://localhost:8001/Engine"] * 2 if debug else [])


# ---------------------------------------------------------------------- text-echo


def test_text_echo_takes_its_voice_from_settings(
    live_fake: FakeUpstream,
    client: APIClient,
    avaturn: AvaturnOverrides,
    caplog: pytest.LogCaptureFixture,
) -> None:
    avaturn(ENGINE="text-echo")
    response = _start(client)
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert "VOICE_ID" in caplog.text  # (the API says only "not configured")

    avaturn(TEXT_ECHO={"VOICE_ID": "voice-123"})
    assert _start(client).status_code == 201
    engine = _create_body(live_fake)["conversation_engine"]
    assert engine == {"type": "text-echo", "tts": {"engine": "elevenlabs", "voice_id": "voice-123"}}
    row = Session.objects.get(status=SessionStatus.LIVE)
    assert (row.engine, row.voice) == ("text-echo", "voice-123")


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENGINE", "pipecat"),
        ("CARTESIA", {"TOKEN_TTL": 7200}),
        ("CARTESIA", {"AGENT": "typo"}),
        ("CARTESIA", "sk_car_oops"),
        ("CARTESIA", {"VERSION": "2025-04-16\r\nX-Evil: 1"}),
        ("CARTESIA", {"VERSION": ""}),
        ("EXTERNAL_ENGINE", {"URL": "https://not-a-socket.example.com"}),
        ("EXTERNAL_ENGINE", {"SAMPLE_RATE": 44100}),
        ("EXTERNAL_ENGINE", {"HEADERS": {"Bad Name": "x"}}),
        ("EXTERNAL_ENGINE", {"HEADERS": {"X-Secret": "line\nbreak"}}),
        ("EXTERNAL_ENGINE", {"HEADERS": {"X-Secret": "x" * 300_000}}),
        ("CARTESIA", {"VERSION": "2" * 9000}),
        # urlsplit drops the newline: the URL checked would not be the URL sent.
        ("EXTERNAL_ENGINE", {"URL": "wss://engine.example.com/a\nb"}),
        ("EXTERNAL_ENGINE", {"URL": "wss://engine.example.com/" + "a" * 5000}),
        ("TEXT_ECHO", {"TTS_ENGINE": "espeak"}),
    ],
)
def test_malformed_engine_settings_are_not_configured(
    avaturn: AvaturnOverrides, name: str, value: Any
) -> None:
    from django_avaturn.conf import avaturn_settings

    avaturn(**{name: value})
    with pytest.raises(NotConfigured) as raised:
        getattr(avaturn_settings, name)
    assert "line\nbreak" not in str(raised.value)
