"""The caps bound what runs at Avaturn, not only the rows we keep.

Concurrent starts through the API, on real threads and database
connections, against the loopback fake over HTTP. The fake stamps each
session's create and terminate as they arrive, so the number of sessions
alive upstream at every instant can be read off its records and compared
with the caps. These run on SQLite and on PostgreSQL
(``AVATURN_TEST_DATABASE_URL``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from openai._constants import MAX_RETRY_AFTER_DELAY
from rest_framework.test import APIClient

from django_avaturn import services
from django_avaturn.exceptions import SessionNotLive
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions import starting, transitions
from django_avaturn.sessions.expiry import ExpiryPolicy, expire_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.sessions.plan import build_plan
from django_avaturn.sessions.starting import UpstreamBounds, _in_flight_until
from django_avaturn.spend.limits import usage_for
from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TERMINATE,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from django_avaturn.upstream.clients import (
    OPENAI_RETRY_WAIT,
    get_avaturn_client,
    get_openai_secrets,
    longest_start,
    longest_terminate,
    unknown_outcome_hold,
)
from tests.helpers import LIST_URL, AvaturnOverrides
from tests.live_fake import (
    OUTLASTS_TIMEOUT,
    assert_no_orphans,
    csrf_json,
    run_threads,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

STARTERS = 30
# Generous: thirty threads on a loaded 2-core machine may wait to connect.
PATIENT = {
    "AVATURN_CONNECT_TIMEOUT": 10,
    "AVATURN_TIMEOUT": 10,
    "OPENAI_TIMEOUT": 10,
}


def peak_alive(fake: FakeUpstream, session_ids: Iterable[str] | None = None) -> int:
    """The most sessions the fake had alive at once (created, not yet terminated).

    An end and a create stamped at the same instant count as one after the
    other: the end arrived first.
    """
    sessions = fake.sessions.values()
    if session_ids is not None:
        wanted = set(session_ids)
        sessions = [s for s in sessions if s.session_id in wanted]
    events = sorted(
        [(s.created_at, 1) for s in sessions]
        + [(s.ended_at if s.ended_at is not None else math.inf, -1) for s in sessions]
    )
    alive = peak = 0
    for _at, step in events:
        alive += step
        peak = max(peak, alive)
    return peak


def start_via_api(user: Any) -> Any:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = csrf_json(client, "post", LIST_URL, {})
    body = response.json()
    return response.status_code, body.get("code") or body.get("session_id")


def start_in_background(user: Any) -> tuple[threading.Thread, list[Any]]:
    """``start_via_api(user)`` on a thread of its own; its outcome lands in the list."""
    outcome: list[Any] = []

    def start() -> None:
        try:
            outcome.append(start_via_api(user))
        finally:
            connection.close()

    thread = threading.Thread(target=start)
    thread.start()
    return thread, outcome


def replacing_two_sessions(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, **caps: int
) -> tuple[threading.Thread, list[Any], Session]:
    """A start in flight that replaces the user's two live sessions (the cap lowered to one,
    each terminate taking a second), its row already older than the crashed-start threshold."""
    avaturn(**PATIENT, **dict.fromkeys(caps, 2))
    services.start_session(user)
    services.start_session(user)
    avaturn(**caps)
    live_fake.set_latency(AVATURN_TERMINATE, 1.0)
    starter, outcome = start_in_background(user)
    starting_rows = Session.objects.filter(status=SessionStatus.STARTING)
    assert wait_until(starting_rows.exists)
    new = starting_rows.get()
    long_ago = timezone.now() - timedelta(seconds=longest_start() + 5)
    Session.objects.filter(pk=new.pk).update(created_at=long_ago, updated_at=long_ago)
    return starter, outcome, new


def sweep_while_its_create_is_in_flight(
    django_user_model: Any, starter: threading.Thread, outcome: list[Any]
) -> None:
    """The expiry command runs while a start's create is in flight (the site cap at 1):
    it ends nothing, another user's start is refused, and the start goes live."""
    report = expire_sessions()
    other = django_user_model.objects.create_user(email="other@example.com", password="pw")
    assert start_via_api(other) == (503, "site_limit_reached")
    starter.join(10)

    assert report.tally.ended == 0
    assert outcome[0][0] == 201


def overlapping_creates(fake: FakeUpstream) -> None:
    """Latency on every upstream call, so that starts are all in flight together."""
    fake.set_latency(OPENAI_CLIENT_SECRET, 0.02)
    fake.set_latency(AVATURN_CREATE, 0.1)
    fake.set_latency(AVATURN_TERMINATE, 0.02)


def test_the_peak_helper_counts_sessions_alive_together(live_fake: FakeUpstream) -> None:
    """The measure itself, on sessions made through the real clients."""
    plan = build_plan()
    avaturn = get_avaturn_client()

    def create() -> str:
        secret = get_openai_secrets().mint(
            session=plan.realtime_session, ttl_seconds=plan.client_secret_ttl
        )
        return avaturn.create_session(plan.avaturn_payload(secret.value)).session_id

    first, second = create(), create()
    avaturn.terminate_session(first)
    third = create()

    assert peak_alive(live_fake) == 2
    assert peak_alive(live_fake, [first, third]) == 1
    assert peak_alive(live_fake, [second, third]) == 2


@pytest.mark.parametrize("policy", ["end_oldest", "refuse"])
def test_one_users_simultaneous_starts_never_run_two_sessions_at_avaturn(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, policy: str
) -> None:
    avaturn(**PATIENT, MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT=policy)
    overlapping_creates(live_fake)

    results = run_threads(lambda _: start_via_api(user), STARTERS)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert peak_alive(live_fake) == 1, results
    statuses = {status for status, _ in results}
    assert 201 in statuses, results
    if policy == "refuse":
        assert sorted(results)[0][0] == 201 and [s for s, _ in results].count(201) == 1
        assert {code for status, code in results if status != 201} == {"session_limit_reached"}
    else:
        assert {code for status, code in results if status != 201} <= {"session_replaced"}
    assert Session.objects.live().count() == 1
    assert_no_orphans(live_fake)


@pytest.mark.parametrize("policy", ["end_oldest", "refuse"])
def test_a_cap_of_two_holds_at_avaturn_under_simultaneous_starts(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, policy: str
) -> None:
    avaturn(**PATIENT, MAX_LIVE_SESSIONS_PER_USER=2, ON_SESSION_LIMIT=policy)
    overlapping_creates(live_fake)

    results = run_threads(lambda _: start_via_api(user), STARTERS)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert peak_alive(live_fake) <= 2, results
    if policy == "refuse":
        assert [status for status, _ in results].count(201) == 2, results
        assert len(live_fake.requests_for(AVATURN_CREATE)) == 2
    assert Session.objects.live().count() == 2
    assert_no_orphans(live_fake)


def test_the_site_cap_holds_at_avaturn_while_users_replace_their_own_sessions(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, django_user_model: Any
) -> None:
    avaturn(
        **PATIENT, MAX_LIVE_SESSIONS=2, MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="end_oldest"
    )
    overlapping_creates(live_fake)
    users = [
        django_user_model.objects.create_user(email=f"site{n}@example.com", password="pw")
        for n in range(3)
    ]

    # Each user starts several times at once: their later starts replace their earlier ones.
    results = run_threads(lambda n: start_via_api(users[n % len(users)]), 15)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert peak_alive(live_fake) <= 2, results
    assert {code for status, code in results if status != 201} <= {
        "session_replaced",
        "site_limit_reached",
    }, results
    assert 1 <= Session.objects.live().count() <= 2
    assert_no_orphans(live_fake)


def test_a_start_waits_for_the_users_session_still_ending(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """The visitor pressed Stop, then Start: the new session is created after the old one ended.

    Avaturn answers the first terminate late with a 503 (without ending the
    session); the retry ends it. Meanwhile the row is ``ending``, and the
    session is still running upstream.
    """
    avaturn(**PATIENT, TERMINATE_RETRIES=1)
    old = services.start_session(user).session
    live_fake.fail(AVATURN_TERMINATE, status=503, delay=1.0)
    stopped: list[Any] = []

    def stop() -> None:
        try:
            client = APIClient(enforce_csrf_checks=True)
            client.force_login(user)
            stopped.append(csrf_json(client, "delete", f"{LIST_URL}{old.session_id}/").status_code)
        finally:
            connection.close()

    stopper = threading.Thread(target=stop)
    stopper.start()
    assert wait_until(lambda: live_fake.counts().get(AVATURN_TERMINATE, 0) == 1)
    assert Session.objects.get(pk=old.pk).status == SessionStatus.ENDING

    status, _ = start_via_api(user)
    stopper.join(10)

    assert (status, stopped) == (201, [204])
    assert peak_alive(live_fake) == 1
    old.refresh_from_db()
    assert (old.status, old.end_reason) == (SessionStatus.ENDED, EndReason.CLIENT)
    assert_no_orphans(live_fake)


# --------------------------------------------------------------------------- waiting


def in_flight_start(user: Any, **fields: Any) -> Session:
    """A row as another process's start leaves it while it talks to the upstreams."""
    return Session.objects.create(user=user, status=SessionStatus.STARTING, **fields)


def test_a_start_gives_up_on_a_replaced_start_that_does_not_finish_and_creates_nothing(
    live_fake: FakeUpstream, user: Any
) -> None:
    """The replaced start's process is still (or no longer) busy: the wait is bounded.

    A start waits as long as a start's upstream calls can take (with
    FAST_TIMEOUTS: the mint's timeout, the create's and a terminate's connect
    and read timeouts), and no longer.
    """
    longest = UpstreamBounds.from_settings().start
    stuck = in_flight_start(user)
    began = time.monotonic()
    status, code = start_via_api(user)
    waited = time.monotonic() - began

    assert (status, code) == (503, "session_still_ending")
    assert longest - 0.5 < waited < longest + 5, (waited, longest)
    row = Session.objects.exclude(pk=stuck.pk).get()
    # Not an upstream error: nothing was asked of the upstreams for it.
    assert (row.status, row.end_reason) == (SessionStatus.FAILED, EndReason.PREVIOUS_STILL_ENDING)
    assert row.session_id is None
    assert live_fake.requests == []  # not even a client secret was minted
    stuck.refresh_from_db()
    assert (stuck.status, stuck.end_reason) == (SessionStatus.ENDING, EndReason.REPLACED)


@pytest.mark.parametrize("policy", ["refuse", "end_oldest"])
def test_a_create_with_an_unknown_outcome_holds_the_slot_until_avaturn_has_ended_it(
    live_fake: FakeUpstream,
    avaturn: AvaturnOverrides,
    user: Any,
    django_user_model: Any,
    policy: str,
) -> None:
    """Avaturn created the session but answered too late: it may run until its user-absent timeout.

    The failed start's row keeps its slot (ending, upstream_error, no id), so
    the user's next start creates nothing and is refused at once (the hold
    outlasts any start's wait), the site cap counts it, the quota does not;
    the expiry command frees the slot only once Avaturn has ended whatever
    the create started.
    """
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT=policy)
    live_fake.fail(AVATURN_CREATE, mode="timeout", delay=OUTLASTS_TIMEOUT)

    assert start_via_api(user) == (504, "upstream_timeout")
    assert wait_until(lambda: len(live_fake.sessions) == 1)  # the fake did create it
    held = Session.objects.get()
    assert (held.status, held.end_reason, held.session_id, held.awaiting_retry) == (
        SessionStatus.ENDING,
        EndReason.UPSTREAM_ERROR,
        None,
        False,
    )
    began = time.monotonic()
    assert start_via_api(user) == (503, "session_still_ending")
    # At once: it could not outlast the hold (a wait would last UpstreamBounds.start).
    assert time.monotonic() - began < UpstreamBounds.from_settings().start * 0.6
    avaturn(MAX_LIVE_SESSIONS=1)
    other = django_user_model.objects.create_user(email="other@example.com", password="pw")
    assert start_via_api(other) == (503, "site_limit_reached")
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 1
    assert peak_alive(live_fake) == 1
    assert usage_for(user).sessions == 0  # what failed is not spent from a quota

    avaturn(EXPIRE_STUCK_AFTER=1)  # not "stuck": it is held on purpose
    hold = timedelta(seconds=unknown_outcome_hold())
    expire_sessions(now=held.updated_at + hold - timedelta(seconds=1))
    held.refresh_from_db()
    assert held.status == SessionStatus.ENDING
    expire_sessions(now=held.updated_at + hold + timedelta(seconds=1))
    held.refresh_from_db()
    assert (held.status, held.end_reason) == (SessionStatus.FAILED, EndReason.UPSTREAM_ERROR)
    assert not Session.objects.active().exists()


@pytest.mark.parametrize("end_reason", [EndReason.UPSTREAM_ERROR, EndReason.REPLACED])
def test_ending_a_row_without_a_session_id_again_does_not_lengthen_its_hold(
    live_fake: FakeUpstream, user: Any, end_reason: str
) -> None:
    """Staff or the kill switch take over an end in flight; a hold keeps its own clock.

    Held for a create's unknown outcome (from ``updated_at``), or claimed while
    it started: neither goes back to live, so nothing needs a fresh stamp, and
    one would keep the slot for longer than anything upstream may run.
    """
    since = timezone.now() - timedelta(seconds=60)
    held = in_flight_start(user)
    Session.objects.filter(pk=held.pk).update(
        status=SessionStatus.ENDING, end_reason=end_reason, updated_at=since
    )
    held.refresh_from_db()

    assert services.end_session(held, reason=EndReason.ADMIN) == Outcome.SKIPPED
    tally = services.end_sessions(Session.objects.all(), reason=EndReason.SHUTDOWN)

    assert tally[Outcome.ALREADY_ENDING] == 1
    held.refresh_from_db()
    assert (held.status, held.end_reason, held.updated_at) == (
        SessionStatus.ENDING,
        end_reason,
        since,
    )
    assert live_fake.requests == []


def test_how_long_a_start_in_flight_is_waited_for_allows_its_worst_case_and_a_margin(
    avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(
        AVATURN_CONNECT_TIMEOUT=5.0,
        AVATURN_TIMEOUT=20.0,
        TERMINATE_RETRIES=2,
        TERMINATE_RETRY_BACKOFF=0.25,
        OPENAI_TIMEOUT=15.0,
        OPENAI_MAX_RETRIES=1,
        USER_ABSENT_TIMEOUT=60,
    )
    # A terminate: 3 attempts of 25 s, 0.25 + 0.5 s between. The client
    # secret: 2 attempts of 15 s and, between them, a Retry-After the OpenAI
    # SDK honours up to 120 s. The create: 25 s. A start's own calls once it
    # stops waiting: 150 + 25 + 75.75 (what it created, its row claimed).
    terminate, calls = 75.75, 150 + 25 + 75.75
    # Reserved, it ends what it replaces, waits at most its calls' time, then
    # makes them; plus the 30 s the expiry's crashed-start threshold allows too.
    in_flight = terminate + calls + calls + 30
    assert OPENAI_RETRY_WAIT >= MAX_RETRY_AFTER_DELAY
    bounds = UpstreamBounds.from_settings()
    assert (bounds.terminate, bounds.start) == (terminate, calls)

    claimed = in_flight_start(user)
    Session.objects.filter(pk=claimed.pk).update(
        status=SessionStatus.ENDING, end_reason=EndReason.REPLACED
    )
    claimed.refresh_from_db()
    assert _in_flight_until(claimed, bounds) == claimed.created_at + timedelta(seconds=in_flight)
    Session.objects.filter(pk=claimed.pk).update(end_reason=EndReason.UPSTREAM_ERROR)
    claimed.refresh_from_db()
    # A create with an unknown outcome, counted from when the start gave up on it
    # (the row's hold): what Avaturn may still have been processing (30 s), then
    # its user-absent timeout.
    assert _in_flight_until(claimed, bounds) == claimed.updated_at + timedelta(seconds=30 + 60)


def test_the_expiry_sweep_and_a_waiting_start_agree_when_a_claimed_starts_calls_are_over(
    user: Any,
) -> None:
    """One rule: the sweep finishes a claimed start's row exactly when a start stops waiting."""
    claimed = in_flight_start(user)
    long_ago = timezone.now() - timedelta(hours=1)
    Session.objects.filter(pk=claimed.pk).update(
        status=SessionStatus.ENDING, end_reason=EndReason.REPLACED, updated_at=long_ago
    )
    claimed.refresh_from_db()
    bounds = UpstreamBounds.from_settings()
    until = _in_flight_until(claimed, bounds)
    policy = replace(ExpiryPolicy.from_settings(), stuck_after=1)

    expire_sessions(policy=policy, now=until - timedelta(microseconds=1), upstream=False)
    claimed.refresh_from_db()
    assert claimed.status == SessionStatus.ENDING  # a start still waits for it
    expire_sessions(policy=policy, now=until, upstream=False)
    claimed.refresh_from_db()
    assert claimed.status == SessionStatus.ENDED  # no start waits for it any more


def test_a_session_whose_terminate_failed_holds_its_users_slot(
    live_fake: FakeUpstream, api_client: Any, user: Any
) -> None:
    """Left ``ending`` with its id for the expiry command's retry, it may still run."""
    Session.objects.create(
        user=user, status=SessionStatus.ENDING, session_id="left-for-retry", end_reason="client"
    )
    Session.objects.filter(session_id="left-for-retry").update(
        updated_at=timezone.now() - timedelta(hours=1)
    )
    began = time.monotonic()
    response = csrf_json(api_client, "post", LIST_URL, {})

    # At once: nothing is in flight to wait for (a wait would last UpstreamBounds.start).
    assert time.monotonic() - began < UpstreamBounds.from_settings().start * 0.6
    assert response.status_code == 503
    assert response.json() == {
        "code": "session_still_ending",
        "detail": "Your previous avatar session is still ending. Please try again shortly.",
    }
    assert response["Retry-After"] == "30"
    assert live_fake.requests == []
    refused = Session.objects.get(session_id=None)
    assert (refused.status, refused.end_reason) == (
        SessionStatus.FAILED,
        EndReason.PREVIOUS_STILL_ENDING,
    )


def test_a_claimed_start_whose_process_died_long_ago_does_not_hold_the_slot(
    live_fake: FakeUpstream, user: Any
) -> None:
    """Ending without an id, and too old for its start to be running: nothing we know of runs."""
    dead = in_flight_start(user, created_at=timezone.now() - timedelta(hours=1))
    Session.objects.filter(pk=dead.pk).update(
        status=SessionStatus.ENDING, end_reason=EndReason.REPLACED
    )
    status, _ = start_via_api(user)
    assert status == 201
    assert Session.objects.live().count() == 1


def test_a_stop_that_fails_while_a_start_waits_for_it_fails_the_start(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """The old session went back to live: it holds the slot, so the new start creates nothing."""
    avaturn(**PATIENT)
    old = services.start_session(user).session
    live_fake.fail(AVATURN_TERMINATE, status=503, delay=1.0)
    stopped: list[int] = []

    def stop() -> None:
        try:
            client = APIClient(enforce_csrf_checks=True)
            client.force_login(user)
            stopped.append(csrf_json(client, "delete", f"{LIST_URL}{old.session_id}/").status_code)
        finally:
            connection.close()

    stopper = threading.Thread(target=stop)
    stopper.start()
    assert wait_until(lambda: live_fake.counts().get(AVATURN_TERMINATE, 0) == 1)

    assert start_via_api(user) == (503, "session_still_ending")
    stopper.join(10)

    assert stopped == [502]
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 1
    old.refresh_from_db()
    assert old.status == SessionStatus.LIVE
    assert_no_orphans(live_fake)


def test_staff_ending_a_start_that_waits_stops_it_before_it_creates_anything(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(**PATIENT)  # it would wait up to 50 s
    stuck = in_flight_start(user)
    starter, outcome = start_in_background(user)
    waiting = Session.objects.exclude(pk=stuck.pk)
    assert wait_until(lambda: waiting.filter(status=SessionStatus.STARTING).exists())
    assert services.end_session(waiting.get(), reason=EndReason.ADMIN) is Outcome.STOPPED
    starter.join(10)

    assert outcome == [(409, "session_ended")]
    row = waiting.get()
    assert (row.status, row.end_reason, row.session_id) == (
        SessionStatus.ENDED,
        EndReason.ADMIN,
        None,
    )
    assert live_fake.requests == []


def test_a_start_that_waited_long_is_not_taken_for_a_crashed_one_while_it_creates(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, django_user_model: Any
) -> None:
    """The expiry command's crashed-start threshold counts from the end of a start's wait.

    The threshold covers a start's own upstream calls, not its wait for the
    user's ending rows (which may last as long again). Counted from the
    reservation, a start that had waited long could be failed by the sweep
    while its create was in flight: its slot freed for another start, two
    sessions at Avaturn for a moment, and its own created only to be ended.
    """
    avaturn(**PATIENT, MAX_LIVE_SESSIONS=1, TERMINATE_RETRIES=2)
    # What it replaced ended, then it waited: this age is within a start's bounds.
    long_ago = timezone.now() - timedelta(seconds=longest_start() + 5)
    reachable = longest_terminate() + UpstreamBounds.from_settings().start
    assert timezone.now() - timedelta(seconds=reachable) < long_ago
    stuck = in_flight_start(user)
    starter, outcome = start_in_background(user)
    waiting = Session.objects.exclude(pk=stuck.pk)
    assert wait_until(lambda: waiting.filter(status=SessionStatus.STARTING).exists())
    assert wait_until(lambda: Session.objects.get(pk=stuck.pk).status == SessionStatus.ENDING)
    # It has waited past the threshold: its reservation is that old.
    waiting.update(created_at=long_ago, updated_at=long_ago)
    live_fake.set_latency(AVATURN_CREATE, 2.0)
    Session.objects.filter(pk=stuck.pk).update(status=SessionStatus.FAILED)
    assert wait_until(lambda: len(live_fake.requests_for(AVATURN_CREATE)) == 1)

    # Its slot stays taken while its create is in flight.
    sweep_while_its_create_is_in_flight(django_user_model, starter, outcome)
    row = waiting.get()
    assert (row.status, row.end_reason) == (SessionStatus.LIVE, "")
    assert peak_alive(live_fake) == 1
    assert_no_orphans(live_fake)


def test_a_start_still_waiting_past_the_threshold_is_not_taken_for_a_crashed_one(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    """A wait may last longer than the crashed-start threshold: the waiting start stamps its row.

    Its Stop came while the previous start's mint was slow: that row is
    ending with no session id, and may still get one, so the new start waits.
    """
    avaturn(**PATIENT, ON_SESSION_LIMIT="refuse", TERMINATE_RETRIES=2)
    assert longest_start() + 5 < UpstreamBounds.from_settings().start  # a wait that long is allowed
    monkeypatch.setattr(starting, "_STAMP_EVERY", 0.1)  # every 15 s otherwise
    stopped = Session.objects.create(
        user=user, status=SessionStatus.ENDING, end_reason=EndReason.CLIENT
    )
    starter, outcome = start_in_background(user)
    waiting = Session.objects.exclude(pk=stopped.pk)
    assert wait_until(lambda: waiting.filter(status=SessionStatus.STARTING).exists())
    long_ago = timezone.now() - timedelta(seconds=longest_start() + 5)  # still within its wait
    waiting.update(created_at=long_ago, updated_at=long_ago)
    assert wait_until(lambda: waiting.get().updated_at > long_ago)  # its next stamp

    report = expire_sessions()
    Session.objects.filter(pk=stopped.pk).update(status=SessionStatus.ENDED)  # its start finished
    starter.join(10)

    assert report.tally.ended == 0
    row = waiting.get()
    assert (row.status, row.end_reason) == (SessionStatus.LIVE, "")
    assert outcome[0][0] == 201


def test_a_start_that_replaced_sessions_is_counted_from_their_end(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, django_user_model: Any
) -> None:
    """A start that replaced several sessions (the cap lowered from 2 to 1, say) stamps its
    row once they have ended, before its own calls: the sweep counts those from there (its
    row here older than the threshold)."""
    starter, outcome, new = replacing_two_sessions(
        live_fake, avaturn, user, MAX_LIVE_SESSIONS_PER_USER=1, MAX_LIVE_SESSIONS=1
    )
    live_fake.set_latency(AVATURN_CREATE, 2.0)
    assert wait_until(lambda: len(live_fake.requests_for(AVATURN_CREATE)) == 3, timeout=10)

    sweep_while_its_create_is_in_flight(django_user_model, starter, outcome)
    assert Session.objects.get(pk=new.pk).status == SessionStatus.LIVE
    assert peak_alive(live_fake) == 2  # the two it replaced, ended before its create
    assert_no_orphans(live_fake)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_start_terminates_what_it_replaces_together(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, concurrency: int
) -> None:
    """Two replaced sessions take one terminate's time, as the crashed-start threshold and
    longest_in_flight() allow, whatever TERMINATE_CONCURRENCY (the bulk ends' bound) says."""
    avaturn(TERMINATE_CONCURRENCY=concurrency)
    starter, outcome, new = replacing_two_sessions(
        live_fake, avaturn, user, MAX_LIVE_SESSIONS_PER_USER=1
    )
    starter.join(10)

    assert outcome[0][0] == 201
    assert Session.objects.get(pk=new.pk).status == SessionStatus.LIVE
    first, second = live_fake.requests_for(AVATURN_TERMINATE)
    # Each terminate takes a second at the fake: one after the other, a second apart.
    assert second.at - first.at < 0.5
    assert_no_orphans(live_fake)


def test_a_start_stopped_while_minting_keeps_its_slot_until_it_can_create_nothing(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """The expiry command's sweep of stuck ends leaves a row claimed while it started alone
    while its start may still create (longest_in_flight after its reservation): its slot
    stays taken, and the user's next start waits for it."""
    avaturn(**PATIENT, EXPIRE_STUCK_AFTER=60)
    live_fake.set_latency(OPENAI_CLIENT_SECRET, 3.0)  # a slow mint (a Retry-After, say)
    live_fake.set_latency(AVATURN_TERMINATE, 2.0)
    first, first_outcome = start_in_background(user)
    assert wait_until(lambda: Session.objects.filter(status=SessionStatus.STARTING).exists())
    stopped = Session.objects.get()
    assert services.end_session(stopped, reason=EndReason.CLIENT) is Outcome.STOPPED
    ago = timezone.now() - timedelta(seconds=61)
    Session.objects.filter(pk=stopped.pk).update(created_at=ago, updated_at=ago)
    claimed = Session.objects.get(pk=stopped.pk)
    assert _in_flight_until(claimed, UpstreamBounds.from_settings()) > timezone.now()

    second, second_outcome = start_in_background(user)
    assert wait_until(lambda: Session.objects.filter(status=SessionStatus.STARTING).exists())
    report = expire_sessions()
    first.join(20)
    second.join(20)

    assert report.tally.ended == 0
    assert peak_alive(live_fake) == 1
    assert (first_outcome[0][0], second_outcome[0][0]) == (409, 201)
    assert_no_orphans(live_fake)


def test_a_start_whose_row_the_sweep_fails_as_it_stops_waiting_creates_nothing(
    live_fake: FakeUpstream, user: Any
) -> None:
    """Between its last look at the rows and its stamp, the expiry command failed its row."""
    stuck = in_flight_start(user)
    swept: list[Session] = []

    def sweep_after_the_last_poll(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        # The wait's look at its own row and the ones it waits for (a few columns).
        polling = (
            sql.startswith("SELECT")
            and '"awaiting_retry"' in sql
            and '"avatar_id"' not in sql
            and " IN (" in sql
        )
        if polling and not swept:
            # The session it waits for ends: this look finds nothing to wait for.
            Session.objects.filter(pk=stuck.pk).update(status=SessionStatus.FAILED)
        result = execute(sql, params, many, context)
        if polling and not swept:
            starting = list(Session.objects.filter(status=SessionStatus.STARTING))
            swept.extend(
                transitions.fail_stuck_starts(
                    starting, detail="swept", untouched_since=timezone.now() + timedelta(seconds=1)
                )
            )
        return result

    with connection.execute_wrapper(sweep_after_the_last_poll), pytest.raises(SessionNotLive):
        services.start_session(user)

    (row,) = swept
    row.refresh_from_db()
    assert (row.status, row.end_reason, row.session_id) == (
        SessionStatus.FAILED,
        EndReason.EXPIRED,
        None,
    )
    assert live_fake.requests == []  # nothing minted, nothing created


def test_a_start_that_replaces_nothing_or_a_live_session_reads_nothing_after_reserving(
    live_fake: FakeUpstream, user: Any
) -> None:
    """Waiting costs a read per poll, only for starts that have something to wait for.

    After the reservation commits: activate; or, having replaced (and
    terminated) a live session, finish that one, then activate.
    """

    def statements_after_the_reservation() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            services.start_session(user)
        verbs = [q["sql"].split()[0].upper() for q in captured.captured_queries]
        return verbs[verbs.index("COMMIT") + 1 :]

    assert statements_after_the_reservation() == ["UPDATE"]
    assert statements_after_the_reservation() == ["UPDATE", "UPDATE"]
    assert Session.objects.live().count() == 1
