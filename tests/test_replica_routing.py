"""A router reading this app's models from a replica: decisions read where rows are written.

A primary/replica router sends every read to a replica that may lag, and
that inside a transaction cannot see the transaction's own writes. Every read
that decides a status change, a cap or a quota is made on the database the
rows are written to. Here the replica is an alias the tests never configure:
whatever reads through the read router fails loudly, so each test below
fails if its path reads a decision from the replica. Assertions read the
default database by name.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from django_avaturn import services
from django_avaturn.exceptions import SessionNotLive
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions.expiry import expire_sessions
from django_avaturn.spend import limits
from django_avaturn.testing import AVATURN_TASK, FakeUpstream
from tests.helpers import LIST_URL, AvaturnOverrides, csrf_delete, csrf_post, live
from tests.live_fake import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

PRIMARY = Session.objects.using("default")


@pytest.fixture(autouse=True)
def _reads_from_a_replica(settings: Any) -> None:
    settings.DATABASE_ROUTERS = ["tests.routers.ReadsFromAReplica"]


def _status(session_id: str) -> tuple[str, str]:
    row = PRIMARY.get(session_id=session_id)
    return row.status, row.end_reason


def test_a_start_replacing_the_users_session_ends_it_upstream(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="end_oldest")
    first = csrf_post(api_client, LIST_URL, {}).json()["session_id"]

    second = csrf_post(api_client, LIST_URL, {})

    assert second.status_code == 201, second.content
    assert upstream.avaturn.deleted == [first]
    assert _status(first) == (SessionStatus.ENDED, EndReason.REPLACED)
    assert _status(second.json()["session_id"])[0] == SessionStatus.LIVE


def test_the_site_cap_and_the_kill_switch_refuse_a_start(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, other_user: Any
) -> None:
    avaturn(MAX_LIVE_SESSIONS=1)
    live(other_user, "theirs")
    full = csrf_post(api_client, LIST_URL, {})
    assert (full.status_code, full.json()["code"]) == (503, "site_limit_reached")

    avaturn(MAX_LIVE_SESSIONS=None)
    limits.set_sessions_enabled(False, reason="incident")
    off = csrf_post(api_client, LIST_URL, {})
    assert (off.status_code, off.json()["code"]) == (503, "sessions_disabled")
    assert upstream.avaturn.create_calls() == []


def test_a_start_reads_the_users_session_still_ending_where_it_is_written(
    api_client: Any, upstream: Any, user: Any
) -> None:
    """The start waits on it (its terminate failed long ago: it may run on), and gives up."""
    stuck = live(user, "stuck")
    PRIMARY.filter(pk=stuck.pk).update(
        status=SessionStatus.ENDING,
        end_reason=EndReason.CLIENT,
        updated_at=timezone.now() - timedelta(hours=1),
    )

    refused = csrf_post(api_client, LIST_URL, {})

    assert (refused.status_code, refused.json()["code"]) == (503, "session_still_ending")
    assert upstream.avaturn.create_calls() == []
    assert _status("stuck") == (SessionStatus.ENDING, EndReason.CLIENT)


def test_a_quota_counts_the_users_sessions(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(QUOTAS={"sessions_per_day": 1})
    started = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    assert csrf_delete(api_client, f"{LIST_URL}{started}/").status_code == 204

    over = csrf_post(api_client, LIST_URL, {})

    assert (over.status_code, over.json()["code"]) == (429, "quota_exceeded")
    assert len(upstream.avaturn.create_calls()) == 1


def test_abandoning_a_live_start_ends_it(api_client: Any, upstream: Any) -> None:
    started = csrf_post(api_client, LIST_URL, {"client_ref": "r" * 22}).json()["session_id"]

    assert csrf_post(api_client, f"{LIST_URL}abandon/", {"client_ref": "r" * 22}).status_code == 204

    assert upstream.avaturn.deleted == [started]
    assert _status(started) == (SessionStatus.ENDED, EndReason.ABANDONED)


def test_a_bulk_end_ends_every_row_it_claims(user: Any, upstream: Any) -> None:
    for index in range(3):
        live(user, f"bulk-{index}")

    tally = services.end_sessions(Session.objects.all(), reason=EndReason.ADMIN)

    assert tally.ended == 3
    assert sorted(upstream.avaturn.deleted) == ["bulk-0", "bulk-1", "bulk-2"]
    assert set(PRIMARY.values_list("status", flat=True)) == {SessionStatus.ENDED}


def test_a_failed_stop_puts_the_row_back_to_live_for_its_retry(
    api_client: Any, upstream: Any
) -> None:
    started = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    upstream.avaturn.on_delete(500, {"detail": "down"})

    assert csrf_delete(api_client, f"{LIST_URL}{started}/").status_code == 502

    assert _status(started) == (SessionStatus.LIVE, "")


def test_the_expiry_command_ends_a_session_past_its_duration(user: Any, upstream: Any) -> None:
    old = live(user, "old")
    PRIMARY.filter(pk=old.pk).update(
        started_at=timezone.now() - timedelta(hours=3), max_duration=3600
    )

    report = expire_sessions()

    assert report.tally.ended == 1
    assert upstream.avaturn.deleted == ["old"]
    assert _status("old") == (SessionStatus.EXPIRED, EndReason.EXPIRED)


def test_deleting_a_user_ends_their_sessions(user: Any, upstream: Any) -> None:
    live(user, "going")

    user.delete()

    assert upstream.avaturn.deleted == ["going"]


def test_say_reads_whether_the_session_is_still_live(live_fake: FakeUpstream, user: Any) -> None:
    row = services.start_session(user).session
    stale = PRIMARY.get(pk=row.pk)
    services.end_session(row, reason=EndReason.CLIENT)

    with pytest.raises(SessionNotLive):
        services.say(stale, "Hello")
    assert live_fake.requests_for(AVATURN_TASK) == []


def test_signing_out_ends_the_users_sessions(user: Any, upstream: Any) -> None:
    started = services.start_session(user).session
    browser = Client()
    browser.force_login(user)

    assert browser.post("/accounts/logout/").status_code in (200, 302)

    # Ended on a thread of its own once the sign-out commits, which logs a failure.
    assert wait_until(lambda: _status(str(started.session_id))[0] == SessionStatus.ENDED)
    assert upstream.avaturn.deleted == [started.session_id]


def test_an_admin_end_of_a_search_ends_the_rows_it_found(
    user: Any, other_user: Any, upstream: Any
) -> None:
    """A queryset joining the user, as the admin's search builds it, is re-selected by key."""
    live(user, "found")
    live(other_user, "not-found")

    found = Session.objects.filter(user__email=user.email)
    tally = services.end_sessions(found, reason=EndReason.ADMIN)

    assert tally.ended == 1
    assert upstream.avaturn.deleted == ["found"]
    assert _status("not-found")[0] == SessionStatus.LIVE
