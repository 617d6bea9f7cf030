"""``say()``: server-side speech through Avaturn's tasks endpoint, over the loopback fake."""

from __future__ import annotations

from typing import Any

import pytest

from django_avaturn import services
from django_avaturn.exceptions import (
    EngineIgnoresTasks,
    SessionNotLive,
    UpstreamError,
    UpstreamTimeout,
)
from django_avaturn.models import EndReason, Session
from django_avaturn.sessions.speech import SAY_MAX_LENGTH
from django_avaturn.testing import AVATURN_TASK, FakeUpstream
from tests.helpers import AvaturnOverrides
from tests.live_fake import OUTLASTS_TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)


def _live(user: Any) -> Session:
    return services.start_session(user).session


def test_say_queues_the_text_on_the_live_session(live_fake: FakeUpstream, user: Any) -> None:
    row = _live(user)
    task_id = services.say(row, "Your order has shipped.")
    assert task_id.startswith("fake-task-")
    assert live_fake.sessions[row.session_id].tasks == ("Your order has shipped.",)
    (request,) = live_fake.requests_for(AVATURN_TASK)
    assert request.headers["authorization"] == f"Bearer {live_fake.avaturn_api_key}"


def test_text_echo_reads_what_say_sends(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(ENGINE="text-echo", TEXT_ECHO={"VOICE_ID": "voice-1"})
    row = _live(user)
    services.say(row, "Welcome back.")
    assert live_fake.sessions[row.session_id].tasks == ("Welcome back.",)


@pytest.mark.parametrize("engine", ["cartesia", "external"])
def test_say_is_refused_for_an_engine_that_ignores_tasks(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides, engine: str
) -> None:
    avaturn(
        ENGINE=engine,
        CARTESIA={**live_fake.cartesia_settings(), "AGENT_ID": "agent_abc"},
        EXTERNAL_ENGINE={"URL": "wss://engine.example.com/avaturn"},
    )
    row = _live(user)
    with pytest.raises(EngineIgnoresTasks) as refused:
        services.say(row, "Hello")
    assert (refused.value.code, refused.value.status_code) == ("engine_ignores_tasks", 409)
    assert live_fake.requests_for(AVATURN_TASK) == []


def test_say_on_an_ended_session_is_refused_even_through_a_stale_row(
    live_fake: FakeUpstream, user: Any
) -> None:
    row = _live(user)
    stale = Session.objects.get(pk=row.pk)
    services.end_session(row, reason=EndReason.CLIENT)
    assert stale.status == "live"  # the caller's copy has not seen the end
    with pytest.raises(SessionNotLive):
        services.say(stale, "Hello")
    assert live_fake.requests_for(AVATURN_TASK) == []


def test_a_session_avaturn_ended_on_its_own_is_not_live(live_fake: FakeUpstream, user: Any) -> None:
    row = _live(user)
    live_fake.end_session(row.session_id)
    with pytest.raises(SessionNotLive):
        services.say(row, "Hello")


@pytest.mark.parametrize(
    ("mode", "raised"), [("status", UpstreamError), ("timeout", UpstreamTimeout)]
)
def test_an_avaturn_failure_is_our_upstream_error_and_is_not_retried(
    live_fake: FakeUpstream, user: Any, mode: str, raised: type[Exception]
) -> None:
    row = _live(user)
    live_fake.fail(
        AVATURN_TASK, mode=mode, status=500, delay=OUTLASTS_TIMEOUT if mode == "timeout" else None
    )
    with pytest.raises(raised):
        services.say(row, "Hello")
    assert len(live_fake.requests_for(AVATURN_TASK)) == 1


@pytest.mark.parametrize("text", ["", "   \n", "x" * (SAY_MAX_LENGTH + 1), None, b"bytes"])
def test_say_refuses_text_it_cannot_send(live_fake: FakeUpstream, user: Any, text: Any) -> None:
    row = _live(user)
    with pytest.raises(ValueError):
        services.say(row, text)
    assert live_fake.requests_for(AVATURN_TASK) == []
    services.say(row, "x" * SAY_MAX_LENGTH)  # the longest allowed goes through


def test_say_names_the_type_it_was_given_instead_of_a_string(
    live_fake: FakeUpstream, user: Any
) -> None:
    with pytest.raises(ValueError, match=r"say\(\) takes a string, not int\."):
        services.say(_live(user), 5)  # type: ignore[arg-type]
