"""Deleting a user ends their sessions upstream before the rows cascade away."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from django_avaturn import services
from django_avaturn.models import Session
from django_avaturn.testing import AVATURN_TERMINATE, FakeUpstream

pytestmark = pytest.mark.django_db(transaction=True)


def test_deleting_a_user_terminates_their_live_sessions_first(
    live_fake: FakeUpstream, settings: Any, user: Any, other_user: Any
) -> None:
    settings.AVATURN = {**settings.AVATURN, "MAX_LIVE_SESSIONS_PER_USER": 2}
    mine = {services.start_session(user).session.session_id for _ in range(2)}
    theirs = services.start_session(other_user).session.session_id

    user.delete()

    assert live_fake.live_session_ids() == {theirs}
    terminated = {r.path.rsplit("/", 1)[1] for r in live_fake.requests_for(AVATURN_TERMINATE)}
    assert terminated == mine
    assert set(Session.objects.values_list("session_id", flat=True)) == {theirs}


def test_deleting_users_in_bulk_terminates_every_session(
    live_fake: FakeUpstream, user: Any, other_user: Any, django_user_model: Any
) -> None:
    services.start_session(user)
    services.start_session(other_user)

    django_user_model.objects.all().delete()

    assert live_fake.live_session_ids() == set()
    assert not Session.objects.exists()


def test_deletion_goes_ahead_when_avaturn_is_down_and_says_so_loudly(
    live_fake: FakeUpstream, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    session_id = services.start_session(user).session.session_id
    live_fake.fail(AVATURN_TERMINATE, status=503, times=None)

    with caplog.at_level(logging.ERROR, logger="django_avaturn.receivers"):
        user.delete()

    assert not Session.objects.exists()
    assert live_fake.live_session_ids() == {session_id}  # bounded by max_duration
    [record] = [r for r in caplog.records if r.name == "django_avaturn.receivers"]
    assert record.levelno == logging.ERROR
    assert session_id in record.getMessage()
    assert "503" in record.getMessage()


def test_deactivating_a_user_terminates_their_sessions(
    live_fake: FakeUpstream, user: Any, other_user: Any
) -> None:
    from django_avaturn.models import EndReason, SessionStatus

    mine = services.start_session(user).session
    theirs = services.start_session(other_user).session

    user.first_login_note = "unrelated save while active"
    user.save()
    assert live_fake.live_session_ids() == {mine.session_id, theirs.session_id}

    user.is_active = False
    user.save()

    assert live_fake.live_session_ids() == {theirs.session_id}
    mine.refresh_from_db()
    assert (mine.status, mine.end_reason) == (SessionStatus.ENDED, EndReason.USER)
