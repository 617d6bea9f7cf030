"""A page that leaves while its start is in flight leaves nothing running.

The widget names each start with a ``client_ref`` and, on pagehide mid-start
(or a start that got no answer), posts it to ``sessions/abandon/``. Each
order of the two requests is covered: the abandon while the start is
starting, after it went live, before its row exists, and between the row's
commit and the start's look at what was abandoned.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.urls import reverse
from rest_framework.test import APIClient

from django_avaturn import services
from django_avaturn.exceptions import AvaturnError, SessionNotLive
from django_avaturn.models import ACTIVE_STATUSES, EndReason, Session, SessionStatus
from django_avaturn.sessions import abandonment, transitions
from django_avaturn.sessions.expiry import expire_sessions
from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TERMINATE,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from tests.helpers import LIST_URL, AvaturnOverrides, csrf_post, redis_reachable, redis_url
from tests.live_fake import assert_no_orphans, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ABANDON_URL = "/avaturn/sessions/abandon/"


@pytest.fixture(autouse=True)
def _forget_abandoned() -> Any:
    # The memory of abandoned starts lives in the cache; user ids repeat across tests.
    cache.clear()
    yield
    cache.clear()


def new_ref() -> str:
    return str(uuid.uuid4())


def signed_in(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_url_name() -> None:
    assert reverse("django_avaturn:session-abandon") == ABANDON_URL


def test_abandoning_a_start_in_flight_ends_what_it_creates_when_the_create_returns(
    api_client: Any, upstream: Any, user: Any
) -> None:
    ref = new_ref()
    abandoned: list[Any] = []

    def page_leaves(request: Any) -> None:
        # The page goes away while Avaturn is creating the session.
        abandoned.append(csrf_post(signed_in(user), ABANDON_URL, {"client_ref": ref}))
        assert Session.objects.get().status == SessionStatus.ENDING

    upstream.avaturn.before_create(page_leaves)

    response = csrf_post(api_client, LIST_URL, {"client_ref": ref})

    assert [a.status_code for a in abandoned] == [204]
    assert (response.status_code, response.json()["code"]) == (409, "session_ended")
    row = Session.objects.get()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ABANDONED)
    assert row.client_ref == ref
    # Created, then terminated by the start's own request as soon as it returned.
    assert row.session_id == "av-sess-1"
    assert upstream.avaturn.deleted == ["av-sess-1"]


def test_abandoning_a_live_start_ends_it_now_and_again_changes_nothing(
    api_client: Any, upstream: Any
) -> None:
    ref = new_ref()
    started = csrf_post(api_client, LIST_URL, {"client_ref": ref})
    assert started.status_code == 201

    first = csrf_post(api_client, ABANDON_URL, {"client_ref": ref})
    second = csrf_post(api_client, ABANDON_URL, {"client_ref": ref})

    assert (first.status_code, second.status_code) == (204, 204)
    assert first["Cache-Control"] == "no-store"
    assert upstream.avaturn.deleted == [started.json()["session_id"]]
    row = Session.objects.get()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ABANDONED)
    assert row.ended_at is not None


def test_an_abandon_that_overtakes_its_start_refuses_it_before_anything_is_spent(
    api_client: Any, upstream: Any
) -> None:
    ref = new_ref()
    # No row yet: the abandon arrived first (another connection, a queue).
    assert csrf_post(api_client, ABANDON_URL, {"client_ref": ref}).status_code == 204
    assert not Session.objects.exists()

    response = csrf_post(api_client, LIST_URL, {"client_ref": ref})

    assert (response.status_code, response.json()["code"]) == (409, "session_ended")
    assert upstream.openai.requests == []
    assert upstream.avaturn.create_calls() == []
    row = Session.objects.get()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ABANDONED)
    assert (row.session_id, row.started_at) == (None, None)
    # Another start, with a reference of its own, is not affected.
    assert csrf_post(api_client, LIST_URL, {"client_ref": new_ref()}).status_code == 201


def test_an_abandon_between_the_reservation_and_its_check_is_seen_by_both(
    api_client: Any, upstream: Any, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The abandon finds the row just committed; the start finds the abandon: one end, no spend.

    The page's abandon is sent the moment the start, its row committed,
    asks what was abandoned. The session the start would have replaced was
    sent nothing, and runs on.
    """
    first = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    ref = new_ref()
    abandoned: list[Any] = []
    was_abandoned = abandonment.was_abandoned

    def page_leaves_meanwhile(user_pk: Any, client_ref: str) -> bool:
        abandoned.append(csrf_post(signed_in(user), ABANDON_URL, {"client_ref": client_ref}))
        return was_abandoned(user_pk, client_ref)

    monkeypatch.setattr(abandonment, "was_abandoned", page_leaves_meanwhile)

    response = csrf_post(api_client, LIST_URL, {"client_ref": ref})

    assert [a.status_code for a in abandoned] == [204]
    assert (response.status_code, response.json()["code"]) == (409, "session_ended")
    assert upstream.avaturn.deleted == []
    assert len(upstream.openai.requests) == len(upstream.avaturn.create_calls()) == 1
    row = Session.objects.get(client_ref=ref)
    assert (row.status, row.end_reason, row.session_id) == (
        SessionStatus.ENDED,
        EndReason.ABANDONED,
        None,
    )
    assert Session.objects.get(session_id=first).status == SessionStatus.LIVE


def test_one_user_cannot_abandon_anothers_start(
    api_client: Any, upstream: Any, user: Any, other_user: Any
) -> None:
    ref = new_ref()
    theirs = services.start_session(other_user, client_ref=ref).session

    # Their live session, by its reference: 204 as for any reference, and untouched.
    assert csrf_post(api_client, ABANDON_URL, {"client_ref": ref}).status_code == 204
    theirs.refresh_from_db()
    assert theirs.status == SessionStatus.LIVE
    assert upstream.avaturn.deleted == []

    # Nor their start yet to come: the memory of an abandon is the caller's own.
    later = new_ref()
    assert csrf_post(api_client, ABANDON_URL, {"client_ref": later}).status_code == 204
    started = csrf_post(signed_in(other_user), LIST_URL, {"client_ref": later})
    assert started.status_code == 201, started.content


def test_an_abandon_avaturn_does_not_honour_is_a_502_and_left_for_the_expiry_command(
    api_client: Any, upstream: Any
) -> None:
    ref = new_ref()
    session_id = csrf_post(api_client, LIST_URL, {"client_ref": ref}).json()["session_id"]
    upstream.avaturn.on_delete(500, {"detail": "boom"})

    response = csrf_post(api_client, ABANDON_URL, {"client_ref": ref})

    assert (response.status_code, response.json()["code"]) == (502, "upstream_error")
    row = Session.objects.get(session_id=session_id)
    # Its page is gone, so nobody retries: never live again, the expiry command's to end.
    assert (row.status, row.end_reason, row.awaiting_retry) == (
        SessionStatus.ENDING,
        "abandoned",
        True,
    )
    upstream.avaturn.on_delete(200, {})
    expire_sessions()
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, "abandoned")


def test_an_abandon_keeps_a_stop_in_flight_from_being_undone(
    live_fake: FakeUpstream, user: Any
) -> None:
    """The visitor's Stop is terminating when the page leaves; that terminate then fails.

    A failed Stop goes back to live for the widget to retry, but the page
    that would retry is gone: the abandon takes the end over, so the row
    stays ending for the expiry command, which terminates it.
    """
    ref = new_ref()
    row = services.start_session(user, client_ref=ref).session
    live_fake.fail(AVATURN_TERMINATE, status=503, delay=0.3)
    failures: list[BaseException] = []

    def stop() -> None:
        try:
            services.end_session(row, reason=EndReason.CLIENT)
        except AvaturnError as exc:
            failures.append(exc)
        finally:
            connection.close()

    stopper = threading.Thread(target=stop)
    stopper.start()
    assert wait_until(lambda: live_fake.counts().get(AVATURN_TERMINATE, 0) == 1)
    services.abandon_start(user, ref)
    stopper.join(10)

    assert len(failures) == 1  # the Stop's terminate failed
    row.refresh_from_db()
    assert (row.status, row.end_reason, row.awaiting_retry) == (
        SessionStatus.ENDING,
        EndReason.CLIENT,
        True,
    )
    expire_sessions()
    row.refresh_from_db()
    assert row.status == SessionStatus.ENDED
    assert_no_orphans(live_fake)


def test_an_abandoned_start_leaves_the_session_it_would_replace_running(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """The page left mid-start: the same user's call in another tab must not end with it.
    A start of theirs still starting, which it claimed too, stays claimed: put back to
    starting, it could go live after its own page's abandon had looked for it."""
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="end_oldest")
    other = services.start_session(user).session
    # A start of the same user's still talking to the upstreams, in a third tab.
    # (Two holders over a cap of one: the start replaces both.)
    starting = Session.objects.create(user=user, status=SessionStatus.STARTING)
    ref = new_ref()
    services.abandon_start(user, ref)

    with pytest.raises(SessionNotLive):
        services.start_session(user, client_ref=ref)

    other.refresh_from_db()
    assert (other.status, other.end_reason) == (SessionStatus.LIVE, "")
    assert other.session_id in live_fake.live_session_ids()
    assert live_fake.requests_for(AVATURN_TERMINATE) == []
    starting.refresh_from_db()
    assert (starting.status, starting.end_reason) == (SessionStatus.ENDING, EndReason.REPLACED)
    assert starting.awaiting_retry is False  # its own start ends it, not the expiry command
    row = Session.objects.get(client_ref=ref)
    assert (row.status, row.end_reason, row.session_id) == (
        SessionStatus.ENDED,
        EndReason.ABANDONED,
        None,
    )
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 1


def test_an_abandoned_start_does_not_put_back_a_start_whose_own_page_left_too(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """Two tabs' starts, both abandoned: the first start's abandon may have looked for
    its row while the second held it (ending) and left it to that start. Put back to
    starting, its own start would take it live with no page (found by a race trial)."""
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="end_oldest")
    first_ref, second_ref = new_ref(), new_ref()
    # The first tab's start, still talking to the upstreams; both pages have left.
    first = Session.objects.create(user=user, status=SessionStatus.STARTING, client_ref=first_ref)
    services.abandon_start(user, second_ref)
    abandonment.remember(user.pk, first_ref)  # its abandon: remembered, the row held

    with pytest.raises(SessionNotLive):
        services.start_session(user, client_ref=second_ref)

    first.refresh_from_db()
    assert (first.status, first.end_reason) == (SessionStatus.ENDING, EndReason.REPLACED)
    # Its own start, when Avaturn answers: the row is not its to activate.
    assert transitions.activate(first, "av-late", None) is False


def test_an_abandon_whose_live_row_a_start_claims_after_it_looked_still_ends_it(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """Tab 1's session is live and its page leaves; tab 2's start (abandoned too)
    claims it to replace it just after the abandon read the row. That start must not
    put it back to live with no page (found by review)."""
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="end_oldest")
    ref = new_ref()
    live = services.start_session(user, client_ref=ref).session
    claimed: list[Session] = []

    def claim_after_the_read(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if sql.startswith("SELECT") and '"client_ref" = %s' in sql and not claimed:
            # Tab 2's reservation claims it as replaced, committed just now.
            claimed.extend(transitions.claim_replaced([live.pk]))
        return result

    with connection.execute_wrapper(claim_after_the_read):
        services.abandon_start(user, ref)
    assert [row.pk for row in claimed] == [live.pk]
    # Tab 2's start finds itself abandoned: it puts back what it claimed, if it may.
    transitions.release_claimed(claimed, sent=False)

    live.refresh_from_db()
    assert live.status == SessionStatus.ENDING  # never live again
    expire_sessions()
    live.refresh_from_db()
    assert live.status == SessionStatus.ENDED
    assert_no_orphans(live_fake)


def test_an_abandon_whose_row_is_put_back_live_while_it_looks_claims_it_again(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """The row is ending under another start's claim when the abandon tries it; that
    start (abandoned too) puts it back to live right after the abandon re-read it as
    ending, so the take-over finds nothing. The abandon must look again and end it
    (found by review)."""
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="end_oldest")
    ref = new_ref()
    live = services.start_session(user, client_ref=ref).session
    claimed = transitions.claim_replaced([live.pk])
    released: list[bool] = []

    def release_after_the_reread(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        result = execute(sql, params, many, context)
        rereading = sql.startswith("SELECT") and '"client_ref" = %s' not in sql
        if rereading and '."id" = %s' in sql and not released:
            released.append(True)
            transitions.release_claimed(claimed, sent=False)
        return result

    with connection.execute_wrapper(release_after_the_reread):
        services.abandon_start(user, ref)

    assert released == [True]
    live.refresh_from_db()
    assert (live.status, live.end_reason) == (SessionStatus.ENDED, EndReason.ABANDONED)
    assert_no_orphans(live_fake)


def test_an_abandon_tries_every_row_of_the_reference_whatever_one_raised(
    live_fake: FakeUpstream, user: Any
) -> None:
    ref = new_ref()
    first = Session.objects.create(user=user, status=SessionStatus.STARTING, client_ref=ref)
    second = Session.objects.create(user=user, status=SessionStatus.STARTING, client_ref=ref)

    tried: list[int] = []

    def fail_the_first_claim(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("UPDATE") and params:
            tried.append(first.pk if first.pk in params else second.pk)
            if len(tried) == 1:
                raise DatabaseError("injected: the first row's claim failed")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail_the_first_claim), pytest.raises(DatabaseError):
        services.abandon_start(user, ref)

    # The row tried after the failure was still claimed, for its own start to end.
    other = Session.objects.get(pk=({first.pk, second.pk} - {tried[0]}).pop())
    assert (other.status, other.end_reason) == (SessionStatus.ENDING, EndReason.ABANDONED)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "client_ref"),
        ({"client_ref": "too-short"}, "client_ref"),
        ({"client_ref": "x" * 65}, "client_ref"),
        ({"client_ref": "spaces are not url safe"}, "client_ref"),
        ({"client_ref": "0123456789abcdef/"}, "client_ref"),
        ({"client_ref": 12345678901234567890}, "client_ref"),
        ({"client_ref": None}, "client_ref"),
        ({"client_ref": str(uuid.uuid4()), "session_id": "av-sess-1"}, "session_id"),
    ],
)
def test_bad_abandons_are_400_with_json(
    api_client: Any, upstream: Any, payload: Any, field: str
) -> None:
    response = csrf_post(api_client, ABANDON_URL, payload)
    assert response.status_code == 400
    body = response.json()
    assert (body["code"], set(body["errors"])) == ("invalid", {field})


@pytest.mark.parametrize("payload", [{"client_ref": "short"}, {"client_ref": "ä" * 20}])
def test_a_start_with_a_bad_client_ref_is_400_and_spends_nothing(
    api_client: Any, upstream: Any, payload: Any
) -> None:
    response = csrf_post(api_client, LIST_URL, payload)
    assert (response.status_code, response.json()["code"]) == (400, "invalid")
    assert set(response.json()["errors"]) == {"client_ref"}
    assert upstream.openai.requests == []


def test_abandon_needs_a_signed_in_caller_csrf_and_post(
    client: Any, api_client: Any, upstream: Any
) -> None:
    body = json.dumps({"client_ref": new_ref()})
    anonymous = client.post(ABANDON_URL, data=body, content_type="application/json")
    no_csrf = api_client.post(ABANDON_URL, data=body, content_type="application/json")
    wrong_method = api_client.get(ABANDON_URL)
    not_json = csrf_post(api_client, ABANDON_URL)  # an empty body

    assert (anonymous.status_code, anonymous.json()["code"]) == (403, "not_authenticated")
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    assert (not_json.status_code, not_json.json()["code"]) == (400, "invalid")


def test_abandons_at_any_moment_of_a_start_leave_nothing_running(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """Real threads and the fake over HTTP: wherever the abandon lands, nothing survives it.

    Before the reservation, while minting, while creating, after the
    activation: each start ends refused or ended, and Avaturn runs nothing.
    """
    avaturn(AVATURN_TIMEOUT=5, OPENAI_TIMEOUT=5)
    live_fake.set_latency(OPENAI_CLIENT_SECRET, 0.03)
    live_fake.set_latency(AVATURN_CREATE, 0.06)
    delays = [0.0, 0.0, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.25, 0.4]
    random.Random(17).shuffle(delays)
    outcomes: list[str] = []

    for delay in delays:
        ref = new_ref()
        outcome: list[str] = []

        def start(ref: str = ref, outcome: list[str] = outcome) -> None:
            try:
                services.start_session(user, client_ref=ref)
                outcome.append("started")
            except AvaturnError as exc:
                outcome.append(exc.code)
            finally:
                connection.close()

        thread = threading.Thread(target=start)
        thread.start()
        threading.Event().wait(delay)
        services.abandon_start(user, ref)
        thread.join(timeout=20)
        assert not thread.is_alive()
        outcomes += outcome
        # Within moments of the start's own end, nothing of it runs.
        assert wait_until(lambda: not live_fake.live_session_ids(), timeout=5), delay
        row = Session.objects.get(client_ref=ref)
        assert row.status not in ACTIVE_STATUSES, (delay, row.status)
        assert row.end_reason == EndReason.ABANDONED, (delay, row.end_reason)

    assert set(outcomes) <= {"started", "session_ended"}, outcomes
    assert_no_orphans(live_fake)


_REMEMBER_SCRIPT = """
import sys

import django

django.setup()
from django_avaturn.sessions import abandonment, transitions

abandonment.remember(int(sys.argv[1]), sys.argv[2])
"""


@pytest.mark.skipif(not redis_reachable(), reason="no Redis at AVATURN_TEST_REDIS_URL")
def test_an_abandon_handled_by_another_process_reaches_the_start_through_a_shared_cache(
    settings: Any, upstream: Any, user: Any
) -> None:
    prefix = f"{os.environ.get('AVATURN_TEST_REDIS_PREFIX', 'avaturn_ab')}-{uuid.uuid4().hex}"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url(),
            "KEY_PREFIX": prefix,
        }
    }
    ref = new_ref()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
        "AVATURN_TEST_REDIS_URL": redis_url(),
        "AVATURN_TEST_REDIS_PREFIX": prefix,
    }
    subprocess.run(
        [sys.executable, "-c", _REMEMBER_SCRIPT, str(user.pk), ref],
        env=env,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        with pytest.raises(SessionNotLive):
            services.start_session(user, client_ref=ref)
    finally:
        # This test's own keys only: RedisCache.clear() would FLUSHDB, under any
        # other test process sharing the database.
        with redis.Redis.from_url(redis_url()) as client:
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
    assert upstream.openai.requests == []
    row = Session.objects.get()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ABANDONED)
