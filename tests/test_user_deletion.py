"""A user deleted, deactivated or signed out keeps no session running upstream."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from django.db import transaction
from django.test import Client

from django_avaturn import services
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions.expiry import expire_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.testing import AVATURN_TERMINATE, FakeUpstream
from tests.helpers import AvaturnOverrides
from tests.live_fake import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_deleting_a_user_terminates_their_live_sessions_first(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, other_user: Any
) -> None:
    avaturn(MAX_LIVE_SESSIONS_PER_USER=2)
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

    with caplog.at_level(logging.ERROR, logger="django_avaturn.users"):
        user.delete()

    assert not Session.objects.exists()
    assert live_fake.live_session_ids() == {session_id}  # bounded by max_duration
    [record] = [r for r in caplog.records if r.name == "django_avaturn.users"]
    assert record.levelno == logging.ERROR
    assert session_id in record.getMessage()
    assert "503" in record.getMessage()


def test_deactivating_a_user_terminates_their_sessions(
    live_fake: FakeUpstream, user: Any, other_user: Any
) -> None:
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


def test_deletion_terminates_only_once_it_commits(live_fake: FakeUpstream, user: Any) -> None:
    session_id = services.start_session(user).session.session_id
    with transaction.atomic():
        user.delete()
        # Not while the deletion holds its locks: it may still roll back.
        assert live_fake.requests_for(AVATURN_TERMINATE) == []
    assert live_fake.live_session_ids() == set()
    assert [r.path.rsplit("/", 1)[1] for r in live_fake.requests_for(AVATURN_TERMINATE)] == [
        session_id
    ]


def test_a_deletion_rolled_back_leaves_the_session_running_and_recorded(
    live_fake: FakeUpstream, user: Any
) -> None:
    session = services.start_session(user).session

    def delete_then_fail() -> None:
        with transaction.atomic():
            user.delete()
            raise RuntimeError("the deletion fails later in its transaction")

    with pytest.raises(RuntimeError):
        delete_then_fail()
    assert live_fake.live_session_ids() == {session.session_id}
    session.refresh_from_db()
    assert session.status == SessionStatus.LIVE


def test_deactivation_ends_sessions_once_it_commits(live_fake: FakeUpstream, user: Any) -> None:
    session = services.start_session(user).session
    with transaction.atomic():
        user.is_active = False
        user.save()
        assert live_fake.requests_for(AVATURN_TERMINATE) == []
    assert live_fake.live_session_ids() == set()
    session.refresh_from_db()
    assert (session.status, session.end_reason) == (SessionStatus.ENDED, EndReason.USER)


def test_deactivation_that_cannot_terminate_says_which_session_runs_on(
    live_fake: FakeUpstream, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    session = services.start_session(user).session
    live_fake.fail(AVATURN_TERMINATE, status=503, times=None)
    with caplog.at_level(logging.ERROR, logger="django_avaturn.users"):
        user.is_active = False
        user.save()
    [record] = [r for r in caplog.records if r.name == "django_avaturn.users"]
    assert session.session_id in record.getMessage() and "503" in record.getMessage()
    assert "the expiry command's next run retries it" in record.getMessage()
    session.refresh_from_db()
    # Its browser can no longer end it: never live again, and the next run retries it.
    assert (session.status, session.end_reason) == (SessionStatus.ENDING, EndReason.USER)
    assert session.awaiting_retry
    live_fake.clear_faults()
    assert expire_sessions().tally[Outcome.TERMINATED] == 1
    session.refresh_from_db()
    assert (session.status, session.end_reason) == (SessionStatus.ENDED, EndReason.USER)
    assert live_fake.live_session_ids() == set()


def test_signing_out_ends_the_users_sessions(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, other_user: Any
) -> None:
    mine = services.start_session(user).session
    theirs = services.start_session(other_user).session
    browser = Client()
    browser.force_login(user)
    # Avaturn slow to answer (within the client's timeout): the sign-out must not wait.
    avaturn(AVATURN_TIMEOUT=5)
    live_fake.set_latency(AVATURN_TERMINATE, 1.5)

    # Django's own logout view (POST since Django 5.0).
    assert browser.post("/accounts/logout/").status_code in (200, 302)
    assert "_auth_user_id" not in browser.session  # signed out already...
    # ...before Avaturn answered (the fake ends a session on arrival, answers later).
    assert Session.objects.get(pk=mine.pk).status != SessionStatus.ENDED

    assert wait_until(lambda: live_fake.live_session_ids() == {theirs.session_id}, timeout=15)
    assert wait_until(
        lambda: Session.objects.filter(pk=mine.pk, status=SessionStatus.ENDED).exists()
    )
    mine.refresh_from_db()
    assert mine.end_reason == EndReason.SIGNED_OUT


def test_a_start_landing_while_the_user_is_deleted_neither_fails_the_deletion_nor_runs_on(
    live_fake: FakeUpstream, user: Any
) -> None:
    from django.db.models.deletion import Collector

    # Django lists the rows to cascade, then deletes: a start can land between.
    collector = Collector(using="default")
    collector.collect([user])
    landed = services.start_session(user).session

    collector.delete()  # without an IntegrityError on the new row's foreign key

    assert not Session.objects.exists()
    assert live_fake.live_session_ids() == set()
    terminated = {r.path.rsplit("/", 1)[1] for r in live_fake.requests_for(AVATURN_TERMINATE)}
    assert terminated == {landed.session_id}


def test_signing_out_without_sessions_needs_no_keys_and_logs_nothing(
    avaturn: AvaturnOverrides, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    avaturn(API_KEY=None)
    browser = Client()
    browser.force_login(user)
    with caplog.at_level(logging.WARNING, logger="django_avaturn"):
        assert browser.post("/accounts/logout/").status_code in (200, 302)
    assert [r for r in caplog.records if r.name.startswith("django_avaturn")] == []


def test_an_activation_during_a_deletion_waits_and_then_finds_no_row(user: Any) -> None:
    """The deletion reads the rows locked: the start cannot record an id it would miss."""
    import threading

    from django.db import connection
    from django.utils import timezone

    if connection.vendor != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    row = Session.objects.create(user=user, status=SessionStatus.STARTING, max_duration=600)
    read_locked = threading.Event()
    outcome: dict[str, Any] = {}

    def pause_after_the_locked_read(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        result = execute(sql, params, many, context)
        if "FOR UPDATE" in sql and "django_avaturn_session" in sql:
            read_locked.set()
            activator.join(1.0)  # it must still be waiting on the row lock
            outcome["activation_waited"] = activator.is_alive()
        return result

    def activate() -> None:
        assert read_locked.wait(10)
        try:
            outcome["activated"] = Session.objects.filter(
                pk=row.pk, status=SessionStatus.STARTING
            ).update(status=SessionStatus.LIVE, session_id="av-late", started_at=timezone.now())
        finally:
            connection.close()

    activator = threading.Thread(target=activate)
    activator.start()
    with connection.execute_wrapper(pause_after_the_locked_read):
        user.delete()
    activator.join(10)

    assert outcome == {"activation_waited": True, "activated": 0}


def _ended_for_password_change(session: Session) -> bool:
    return Session.objects.filter(
        pk=session.pk, status=SessionStatus.ENDED, end_reason=EndReason.PASSWORD_CHANGED
    ).exists()


def test_changing_the_password_ends_the_users_sessions(
    live_fake: FakeUpstream, user: Any, other_user: Any
) -> None:
    """Django signs every other browser out (their session auth hash no longer matches):
    those can no longer stop their sessions, so the change ends them, as signing out does."""
    mine = services.start_session(user).session
    theirs = services.start_session(other_user).session
    browser = Client()
    browser.force_login(user)

    response = browser.post(
        "/accounts/password_change/",
        {"old_password": "pw", "new_password1": "a-new-pw-42", "new_password2": "a-new-pw-42"},
    )

    assert response.status_code == 302
    assert wait_until(lambda: _ended_for_password_change(mine), timeout=15)
    assert live_fake.live_session_ids() == {theirs.session_id}


def test_a_password_set_elsewhere_ends_them_too(live_fake: FakeUpstream, user: Any) -> None:
    from django.contrib.auth.hashers import make_password

    first = services.start_session(user).session
    # A reset, a management command, another process: a fresh instance, set and saved.
    loaded = type(user).objects.get(pk=user.pk)
    loaded.set_password("reset-by-email")
    loaded.save()
    assert wait_until(lambda: _ended_for_password_change(first), timeout=15)

    # A hash written directly, saved with only that field.
    second = services.start_session(user).session
    loaded.password = make_password("written-directly")
    loaded.save(update_fields=["password"])
    assert wait_until(lambda: _ended_for_password_change(second), timeout=15)
    assert live_fake.live_session_ids() == set()


def test_saves_that_keep_the_password_end_nothing(
    live_fake: FakeUpstream, user: Any, django_assert_num_queries: Any
) -> None:
    session = services.start_session(user).session
    user.email = "ada.lovelace@example.com"
    user.save()
    # Signing in writes last_login only: not even a query to compare the hash.
    with django_assert_num_queries(1):
        user.save(update_fields=["last_login"])
    browser = Client()
    assert browser.login(email="ada.lovelace@example.com", password="pw")

    # Any ending in the background (none is expected) has finished before we look.
    for thread in threading.enumerate():
        if thread.name == "avaturn-end-sessions":
            thread.join(15)
    session.refresh_from_db()
    assert session.status == SessionStatus.LIVE
    assert live_fake.live_session_ids() == {session.session_id}
