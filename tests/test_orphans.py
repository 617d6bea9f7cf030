"""A session Avaturn created is never recorded as ended while it may still run.

Three ways a start can be left holding an upstream session it must end: staff
(or the kill switch) ended the row while it was starting, Avaturn's answer
named the session but was unusable, or the answer was cut short after naming
it. When ending that session fails too, the row must stay where the expiry
command finds it and retries, not be marked ended. Real HTTP to the fake.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_avaturn import services
from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import (
    SessionNotLive,
    StorageUnavailable,
    UpstreamError,
    UserNotActive,
)
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions.expiry import expire_sessions
from django_avaturn.signals import session_ended
from django_avaturn.testing import AVATURN_CREATE, AVATURN_TERMINATE, FakeUpstream
from tests.helpers import AvaturnOverrides
from tests.live_fake import assert_no_orphans, fail_activation, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _after_stuck_window() -> Any:
    stuck_after = avaturn_settings.EXPIRE_STUCK_AFTER
    return timezone.now() + timedelta(seconds=stuck_after + 1)


def _expire_later() -> None:
    report = expire_sessions(now=_after_stuck_window())
    assert report.failed == 0


def _retried_after_being_left_ending(live_fake: FakeUpstream) -> Session:
    """The orphan is tracked (ending, with its id); once Avaturn answers, a retry ends it."""
    (created,) = live_fake.live_session_ids()
    row = Session.objects.get()
    assert (row.status, row.session_id) == (SessionStatus.ENDING, created)
    live_fake.clear_faults()
    _expire_later()
    assert live_fake.live_session_ids() == set()
    row.refresh_from_db()
    return row


def _slow_start(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> tuple[threading.Thread, list[BaseException]]:
    """A start whose Avaturn create takes a second: time to act while it is starting."""
    avaturn(AVATURN_TIMEOUT=5)
    live_fake.set_latency(AVATURN_CREATE, 1.0)
    outcome: list[BaseException] = []
    return _start_in_thread(user, outcome), outcome


def _start_in_thread(user: Any, outcome: list[BaseException]) -> threading.Thread:
    def start() -> None:
        try:
            services.start_session(user)
        except BaseException as exc:  # the answer the visitor gets
            outcome.append(exc)
        finally:
            connection.close()  # as a request's thread would

    thread = threading.Thread(target=start)
    thread.start()
    assert wait_until(lambda: Session.objects.filter(status=SessionStatus.STARTING).exists())
    return thread


def test_a_start_ended_meanwhile_whose_terminate_fails_is_retried_by_the_expiry_command(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides
) -> None:
    thread, outcome = _slow_start(live_fake, avaturn, user)
    live_fake.fail(AVATURN_TERMINATE, status=503, times=None)
    row = Session.objects.get()
    services.end_session(row, reason=EndReason.ADMIN)
    thread.join(10)

    assert [type(exc) for exc in outcome] == [SessionNotLive]
    (created,) = live_fake.live_session_ids()
    row.refresh_from_db()
    # Not "ended": Avaturn still runs it. Left ending, with its id, for a retry.
    assert (row.status, row.session_id, row.end_reason) == (
        SessionStatus.ENDING,
        created,
        EndReason.ADMIN,
    )

    # A retry that fails again keeps it ending (never live again), for the next.
    report = expire_sessions(now=_after_stuck_window())
    assert report.failed == 1
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.ENDING, EndReason.ADMIN)

    live_fake.clear_faults()
    _expire_later()
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    assert live_fake.live_session_ids() == set()
    assert_no_orphans(live_fake)


def test_a_start_slower_than_the_stuck_sweep_still_leaves_its_orphan_tracked(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides
) -> None:
    thread, outcome = _slow_start(live_fake, avaturn, user)
    # The sweep takes the slow start for a dead one and marks it failed.
    expire_sessions(now=_after_stuck_window())
    assert Session.objects.get().status == SessionStatus.FAILED
    live_fake.fail(AVATURN_TERMINATE, status=503, times=None)
    thread.join(10)

    assert [type(exc) for exc in outcome] == [SessionNotLive]
    row = _retried_after_being_left_ending(live_fake)
    # It never went live: a failed start, whatever the sweep had marked.
    assert (row.status, row.end_reason) == (SessionStatus.FAILED, EndReason.UPSTREAM_ERROR)


def test_deleting_a_user_mid_start_is_a_clean_refusal_and_ends_the_session(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides
) -> None:
    thread, outcome = _slow_start(live_fake, avaturn, user)
    user.delete()
    thread.join(10)

    # As a start for a user already deleted is refused: 403 not_authenticated.
    assert [type(exc) for exc in outcome] == [UserNotActive]
    assert live_fake.live_session_ids() == set()
    assert not Session.objects.exists()


def test_deactivating_a_user_mid_start_answers_403_as_an_inactive_users_start(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides
) -> None:
    """Not a 409 ``session_ended``: the user can no longer act, whatever they retry."""
    from rest_framework.test import APIClient

    from tests.live_fake import csrf_json

    avaturn(AVATURN_TIMEOUT=5)
    live_fake.set_latency(AVATURN_CREATE, 1.0)
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    answers: list[Any] = []

    def start() -> None:
        try:
            answers.append(csrf_json(browser, "post", "/avaturn/sessions/"))
        finally:
            connection.close()

    thread = threading.Thread(target=start)
    thread.start()
    assert wait_until(lambda: Session.objects.filter(status=SessionStatus.STARTING).exists())
    user.is_active = False
    user.save()
    thread.join(10)

    [answer] = answers
    assert (answer.status_code, answer.json()["code"]) == (403, "not_authenticated")
    # The same answer a start gets once the user is inactive.
    assert csrf_json(browser, "post", "/avaturn/sessions/").status_code == 403
    assert (Session.objects.get().end_reason, live_fake.live_session_ids()) == (
        EndReason.USER,
        set(),
    )


def test_deleting_a_user_terminates_ends_still_waiting_for_a_retry(
    live_fake: FakeUpstream, user: Any
) -> None:
    session = services.start_session(user).session
    # As _leave_for_retry leaves one: ending, with its id, Avaturn still running it.
    Session.objects.filter(pk=session.pk).update(
        status=SessionStatus.ENDING, end_reason=EndReason.ADMIN
    )

    user.delete()

    assert live_fake.live_session_ids() == set()


def test_an_unusable_create_answer_whose_terminate_fails_is_retried_and_ends_failed(
    live_fake: FakeUpstream, user: Any
) -> None:
    live_fake.fail(AVATURN_CREATE, mode="malformed")  # names the session, cut mid-JSON
    live_fake.fail(AVATURN_TERMINATE, status=503, times=None)

    with pytest.raises(UpstreamError):
        services.start_session(user)

    (created,) = live_fake.live_session_ids()
    row = Session.objects.get()
    assert (row.status, row.session_id, row.end_reason) == (
        SessionStatus.ENDING,
        created,
        EndReason.UPSTREAM_ERROR,
    )
    assert "unparseable answer" in row.end_detail

    live_fake.clear_faults()
    ended: list[Any] = []

    def on_ended(sender: Any, session: Session, **kwargs: Any) -> None:
        ended.append(session.pk)

    session_ended.connect(on_ended)
    try:
        _expire_later()
    finally:
        session_ended.disconnect(on_ended)
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.FAILED, EndReason.UPSTREAM_ERROR)
    assert row.ended_at is not None
    assert live_fake.live_session_ids() == set()
    # It never started (no session_started): no session_ended either.
    assert ended == []


def test_a_database_failure_after_create_whose_terminate_fails_is_retried(
    live_fake: FakeUpstream, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_activation(monkeypatch)
    live_fake.fail(AVATURN_TERMINATE, status=503, times=None)

    with pytest.raises(StorageUnavailable):
        services.start_session(user)

    monkeypatch.undo()
    row = _retried_after_being_left_ending(live_fake)
    assert (row.status, row.end_reason) == (SessionStatus.FAILED, EndReason.SITE_ERROR)


def test_a_create_answer_cut_short_after_naming_the_session_ends_that_session(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides
) -> None:
    # A byte every 40 ms: the id (the first ~43 bytes, 1.7 s) arrives within
    # the 2.5 s deadline (connect + read timeout), the whole ~96 bytes do not.
    avaturn(AVATURN_CONNECT_TIMEOUT=1.0, AVATURN_TIMEOUT=1.5)
    live_fake.fail(AVATURN_CREATE, mode="drip", delay=0.04)

    with pytest.raises(UpstreamError) as raised:
        services.start_session(user)

    assert raised.value.code == "upstream_error"
    (sent,) = live_fake.sessions.values()
    row = Session.objects.get()
    assert (row.status, row.session_id) == (SessionStatus.FAILED, sent.session_id)
    assert "cut short" in row.end_detail
    assert live_fake.live_session_ids() == set()
