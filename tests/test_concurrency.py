"""Real threads, real database connections, the real loopback fake over HTTP.

These run on SQLite (IMMEDIATE transactions, see tests/settings.py) and on
PostgreSQL (``AVATURN_TEST_DATABASE_URL``); the guarantees are the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from django_avaturn import services
from django_avaturn.exceptions import AvaturnError
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions import starting, transitions
from django_avaturn.sessions.ending import end_sessions
from django_avaturn.sessions.expiry import expire_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.sessions.plan import build_plan
from django_avaturn.signals import session_ended
from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TERMINATE,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from tests.helpers import AvaturnOverrides, redis_reachable, redis_url
from tests.live_fake import (
    assert_no_orphans,
    csrf_json,
    live_row_ids,
    run_threads,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)

STARTERS = 50


def _start(user: Any) -> str:
    try:
        started = services.start_session(user)
    except AvaturnError as exc:
        return exc.code
    return f"ok:{started.session.session_id}"


@pytest.mark.parametrize("policy", ["refuse", "end_oldest"])
def test_50_simultaneous_starts_leave_one_live_session_and_no_orphan(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any, policy: str
) -> None:
    avaturn(
        MAX_LIVE_SESSIONS_PER_USER=1,
        ON_SESSION_LIMIT=policy,
        AVATURN_CONNECT_TIMEOUT=10,
        AVATURN_TIMEOUT=10,
        OPENAI_TIMEOUT=10,
        TERMINATE_RETRIES=2,
    )
    # Latency on every upstream call, so the starts are all in flight together.
    live_fake.set_latency(OPENAI_CLIENT_SECRET, 0.02)
    live_fake.set_latency(AVATURN_CREATE, 0.05)
    live_fake.set_latency(AVATURN_TERMINATE, 0.02)

    results = run_threads(lambda _: _start(user), STARTERS)

    assert not [r for r in results if isinstance(r, BaseException)], results
    ok = [r for r in results if r.startswith("ok:")]
    live = live_row_ids()
    assert len(live) == 1, results
    assert Session.objects.filter(status=SessionStatus.LIVE).count() == 1
    assert_no_orphans(live_fake)
    # Every session Avaturn created is either the live one or was terminated.
    created = len(live_fake.requests_for(AVATURN_CREATE))
    assert created - len(live_fake.requests_for(AVATURN_TERMINATE)) <= 1
    if policy == "refuse":
        assert len(ok) == 1
        assert sorted(set(results) - set(ok)) == ["session_limit_reached"]
        assert created == 1
    else:
        assert ok, results
        assert set(results) - set(ok) <= {"session_replaced"}
        # The live session is the one the last successful start returned or a later one.
        assert f"ok:{next(iter(live))}" in ok
        replaced = Session.objects.filter(end_reason=EndReason.REPLACED)
        assert replaced.count() == STARTERS - 1


def test_simultaneous_ends_terminate_once_and_record_one_reason(
    live_fake: FakeUpstream, user: Any
) -> None:
    session = services.start_session(user).session
    live_fake.set_latency(AVATURN_TERMINATE, 0.1)
    ended: list[str] = []
    lock = threading.Lock()

    def receiver(sender: Any, session: Session, reason: str, **kwargs: Any) -> None:
        with lock:
            ended.append(reason)

    session_ended.connect(receiver, weak=False)

    def end(index: int) -> Any:
        kind = index % 3
        if kind == 0:  # the visitor's browser: DELETE through the API
            client = APIClient(enforce_csrf_checks=True)
            client.force_login(user)
            return csrf_json(client, "delete", f"/avaturn/sessions/{session.session_id}/")
        row = Session.objects.get(pk=session.pk)
        reason = EndReason.ADMIN if kind == 1 else EndReason.EXPIRED
        return services.end_session(row, reason=reason)

    try:
        results = run_threads(end, 12)
    finally:
        session_ended.disconnect(receiver)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert all(r.status_code == 204 for r in results[::3])
    assert len(live_fake.requests_for(AVATURN_TERMINATE)) == 1
    row = Session.objects.get(pk=session.pk)
    assert row.status in (SessionStatus.ENDED, SessionStatus.EXPIRED)
    assert row.end_reason in (EndReason.CLIENT, EndReason.ADMIN, EndReason.EXPIRED)
    assert ended == [row.end_reason]
    assert (row.status == SessionStatus.EXPIRED) == (row.end_reason == EndReason.EXPIRED)
    assert_no_orphans(live_fake)


def test_ending_a_session_while_it_starts_leaves_nothing_running(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(AVATURN_TIMEOUT=5)
    live_fake.set_latency(AVATURN_CREATE, 0.3)
    outcome: list[Any] = []

    def start() -> None:
        try:
            outcome.append(_start(user))
        finally:
            connection.close()

    thread = threading.Thread(target=start)
    thread.start()
    assert wait_until(lambda: live_fake.counts().get(AVATURN_CREATE, 0) == 1)
    row = Session.objects.get()
    assert row.status == SessionStatus.STARTING
    services.end_session(row, reason=EndReason.ADMIN)
    thread.join(timeout=10)

    assert outcome == ["session_ended"]  # staff ended it: not "replaced"
    row.refresh_from_db()
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.ADMIN)
    assert row.session_id is not None  # recorded, so staff can see what was created
    assert len(live_fake.requests_for(AVATURN_TERMINATE)) == 1
    assert_no_orphans(live_fake)


# --------------------------------------------------------------------------- throttling


_THROTTLE_SCRIPT = """
import sys
from types import SimpleNamespace

import django

django.setup()
from django_avaturn.api.throttling import SessionStartThrottle

user = SimpleNamespace(pk=int(sys.argv[1]), is_authenticated=True)
request = SimpleNamespace(user=user, META={"REMOTE_ADDR": "127.0.0.1"})
print(SessionStartThrottle().allow_request(request, None))
"""


def _allowed_in_another_process(user_pk: int, prefix: str) -> bool:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
        "AVATURN_TEST_REDIS_URL": redis_url(),
        "AVATURN_TEST_REDIS_PREFIX": prefix,
    }
    out = subprocess.run(
        [sys.executable, "-c", _THROTTLE_SCRIPT, str(user_pk)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return out.stdout.strip() == "True"


@pytest.mark.skipif(not redis_reachable(), reason="no Redis at AVATURN_TEST_REDIS_URL")
def test_start_throttle_is_shared_across_processes_through_redis(
    settings: Any, avaturn: AvaturnOverrides
) -> None:
    from django_avaturn.api.throttling import SessionStartThrottle

    prefix = f"django-avaturn-tests-{uuid.uuid4().hex}"
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url(),
            "KEY_PREFIX": prefix,
        }
    }
    avaturn(START_THROTTLE_RATE="2/minute")
    user = SimpleNamespace(pk=4242, is_authenticated=True)
    request = SimpleNamespace(user=user, META={"REMOTE_ADDR": "127.0.0.1"})
    # Keys carry a fresh prefix and expire with the rate's window: nothing to clean up.
    assert SessionStartThrottle().allow_request(request, None)  # type: ignore[arg-type]
    assert SessionStartThrottle().allow_request(request, None)  # type: ignore[arg-type]
    # This process spent the user's two starts; another process sees that.
    assert not _allowed_in_another_process(4242, prefix)
    assert _allowed_in_another_process(4243, prefix)  # someone else is not affected
    assert not SessionStartThrottle().allow_request(request, None)  # type: ignore[arg-type]


def test_the_site_wide_cap_holds_under_simultaneous_starts_by_many_users(
    live_fake: FakeUpstream, avaturn: AvaturnOverrides, django_user_model: Any
) -> None:
    avaturn(MAX_LIVE_SESSIONS=3, AVATURN_CONNECT_TIMEOUT=10, AVATURN_TIMEOUT=10, OPENAI_TIMEOUT=10)
    live_fake.set_latency(OPENAI_CLIENT_SECRET, 0.02)
    live_fake.set_latency(AVATURN_CREATE, 0.05)
    users = [
        django_user_model.objects.create_user(email=f"crowd{n}@example.com", password="pw")
        for n in range(20)
    ]

    results = run_threads(lambda n: _start(users[n]), len(users))

    assert not [r for r in results if isinstance(r, BaseException)], results
    ok = [r for r in results if r.startswith("ok:")]
    assert len(ok) == 3, results
    assert sorted(set(results) - set(ok)) == ["site_limit_reached"]
    assert Session.objects.filter(status=SessionStatus.LIVE).count() == 3
    # Refused starts spent nothing upstream.
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 3
    assert_no_orphans(live_fake)


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's locking only")
def test_a_reservation_takes_sqlites_write_lock_before_it_reads(
    user: Any, other_user: Any, django_user_model: Any
) -> None:
    """Without IMMEDIATE transactions a read first would deadlock with a concurrent writer.

    A deferred transaction that reads takes a shared lock; a writer then waits
    for it, and the reader's own write is refused at once ("database is
    locked"), since waiting would deadlock. The reservation writes first, so
    the other writer simply waits its turn.
    """
    from django.db import connections

    real: Any = connections["default"]
    real.ensure_connection()  # connecting sets transaction_mode from the settings
    configured_mode = real.transaction_mode
    other = other_user
    plan = build_plan()
    writer_errors: list[BaseException] = []

    def concurrent_write() -> None:
        try:
            django_user_model.objects.filter(pk=other.pk).update(is_staff=True)
        except BaseException as exc:
            writer_errors.append(exc)
        finally:
            connections.close_all()

    writer = threading.Thread(target=concurrent_write)

    def after_first_read(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith("SELECT") and writer.ident is None:
            writer.start()
            writer.join(0.3)  # the writer is now waiting on the lock, or done
        return result

    real.transaction_mode = None  # a plain (deferred) BEGIN
    try:
        with connection.execute_wrapper(after_first_read):
            reservation = starting._reserve_slot(user, plan, cap=1, refuse=True)
    finally:
        real.transaction_mode = configured_mode
    writer.join(25)
    assert not writer.is_alive() and not writer_errors
    assert reservation.row.status == SessionStatus.STARTING and reservation.replaced == []
    assert django_user_model.objects.get(pk=other.pk).is_staff


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's write lock orders these")
def test_a_kill_switch_flip_waits_for_the_reservations_in_flight(user: Any) -> None:
    """A start that read "on" must commit its row before the flip, so the sweep after sees it."""
    from django_avaturn.spend import limits

    read_switch = threading.Event()
    release = threading.Event()
    flipped = threading.Event()
    outcome: dict[str, Any] = {}

    def pause_after_the_switch_read(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        result = execute(sql, params, many, context)
        if "serviceswitch" in sql.lower() and not read_switch.is_set():
            read_switch.set()
            release.wait(10)
        return result

    def reserve() -> None:
        try:
            with connection.execute_wrapper(pause_after_the_switch_read):
                outcome["row"] = starting._reserve_slot(user, build_plan(), cap=1, refuse=True).row
            outcome["committed_before_flip"] = not flipped.is_set()
        finally:
            connection.close()

    def flip() -> None:
        try:
            limits.set_sessions_enabled(False, reason="test")
            flipped.set()
        finally:
            connection.close()

    starter = threading.Thread(target=reserve)
    starter.start()
    assert read_switch.wait(10)
    flipper = threading.Thread(target=flip)
    flipper.start()
    flipper.join(0.5)
    flip_finished_meanwhile = flipped.is_set()
    release.set()
    starter.join(10)
    flipper.join(10)

    assert not flip_finished_meanwhile  # it waited for the reservation in flight
    assert outcome["committed_before_flip"]
    # So the sweep that follows a flip finds the row, and the next start is refused.
    assert Session.objects.active().filter(pk=outcome["row"].pk).exists()
    assert not limits.sessions_enabled()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's advisory locks")
def test_a_reservation_waiting_for_its_users_lock_holds_no_advisory_lock(
    user: Any, django_user_model: Any
) -> None:
    """The user's row lock first, then the advisory locks, as every transaction takes them.

    A reservation queued behind its user (a deactivation, another start of
    theirs) holds no kill switch lock meanwhile: a flip goes through at once,
    and the reservation, let go, sees the switch off.
    """
    from django.db import transaction

    from django_avaturn.exceptions import SessionsDisabled
    from django_avaturn.spend import limits

    locked, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def hold_the_user() -> None:
        try:
            with transaction.atomic():
                django_user_model.objects.select_for_update().get(pk=user.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    def reserve() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                outcome["pid"] = cursor.fetchone()[0]
            starting._reserve_slot(user, build_plan(), cap=1, refuse=True)
        except AvaturnError as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    def waiting_for_a_lock() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [outcome["pid"]]
            )
            row = cursor.fetchone()
        return row is not None and row[0] == "Lock"

    def flip() -> None:
        try:
            limits.set_sessions_enabled(False)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_user)
    holder.start()
    assert locked.wait(10)
    starter = threading.Thread(target=reserve)
    starter.start()
    assert wait_until(lambda: "pid" in outcome and waiting_for_a_lock())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'",
            [outcome["pid"]],
        )
        advisory_held = cursor.fetchone()[0]
    flipper = threading.Thread(target=flip)
    flipper.start()
    flipper.join(5)
    flip_went_through = not flipper.is_alive()
    release.set()
    holder.join(10)
    starter.join(10)
    flipper.join(10)

    assert advisory_held == 0
    assert flip_went_through
    assert isinstance(outcome.get("error"), SessionsDisabled)
    assert not Session.objects.active().exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite's write lock orders these")
def test_a_replaced_start_that_goes_live_meanwhile_is_replaced_with_its_id(user: Any) -> None:
    """B replaces A while A is starting; A's activation commits just before B claims it.

    B must then know A's session id (so ``_end_replaced`` terminates it), not
    a stale copy without one: with that, B skipped it, and A ran on with its
    row ``ending``, two sessions under a cap of one.
    """
    plan = build_plan()
    row_a = starting._reserve_slot(user, plan, cap=1, refuse=False).row
    about_to_claim = threading.Event()
    release = threading.Event()
    outcome: dict[str, Any] = {}

    def pause_before_the_claim(
        execute: Any, sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if sql.lstrip().upper().startswith("UPDATE") and not about_to_claim.is_set():
            about_to_claim.set()
            release.wait(10)
        return execute(sql, params, many, context)

    def replace() -> None:
        try:
            with connection.execute_wrapper(pause_before_the_claim):
                outcome["replaced"] = starting._reserve_slot(
                    user, build_plan(), cap=1, refuse=False
                ).replaced
        finally:
            connection.close()

    replacer = threading.Thread(target=replace)
    replacer.start()
    assert about_to_claim.wait(10)
    activated = transitions.activate(row_a, "sess-A", timezone.now())
    release.set()
    replacer.join(10)

    assert activated
    assert [(old.pk, old.session_id) for old in outcome["replaced"]] == [(row_a.pk, "sess-A")]
    row_a.refresh_from_db()
    assert (row_a.status, row_a.end_reason) == (SessionStatus.ENDING, EndReason.REPLACED)


def test_ending_every_session_waits_for_a_row_a_heartbeat_is_updating(
    live_fake: FakeUpstream, user: Any
) -> None:
    """The kill switch, the admin's action and sign-out must end every row they are given.

    The expiry command may skip a row another transaction holds (SKIP LOCKED:
    hosts share the work, and its next run sees the row). A one-off caller
    has no next run: skipping a row a heartbeat was updating at that moment
    left a session billing after the kill switch, with nothing reported.
    """
    from django.db import connections, transaction

    pk = services.start_session(user).session.pk
    holding, release = threading.Event(), threading.Event()

    def heartbeat_in_flight() -> None:
        try:
            with transaction.atomic():
                Session.objects.filter(pk=pk).update(last_seen_at=timezone.now())
                holding.set()
                release.wait(0.5)  # then commit, as a heartbeat does
        finally:
            connections.close_all()

    beat = threading.Thread(target=heartbeat_in_flight)
    beat.start()
    assert holding.wait(5)
    tally = end_sessions(Session.objects.active(), reason=EndReason.SHUTDOWN)
    beat.join()

    assert tally[Outcome.TERMINATED] == 1
    assert Session.objects.get(pk=pk).status == SessionStatus.ENDED
    assert_no_orphans(live_fake)


# --------------------------------------------------------------------------- ends in flight


def _browser(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _staff(django_user_model: Any) -> Any:
    from django.test import Client

    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    client = Client()
    client.force_login(root)
    return client


def _heartbeat(client: APIClient, session_id: str) -> Any:
    return csrf_json(client, "post", f"/avaturn/sessions/{session_id}/heartbeat/")


def _staff_acts(how: str, staff: Any, row: Session) -> None:
    changelist = "/admin/django_avaturn/session/"
    if how == "kill switch":  # "Stop all sessions now"
        response = staff.post(
            f"{changelist}kill-switch/", {"reason": "runaway spend", "confirm": "yes"}
        )
    elif how == "terminate selected":
        response = staff.post(
            changelist,
            {"action": "terminate_selected", "_selected_action": [row.pk], "index": 0},
        )
    else:  # the change page's Terminate button
        response = staff.post(f"{changelist}{row.pk}/terminate/")
    assert response.status_code == 302


@pytest.mark.parametrize("staff_action", ["kill switch", "terminate selected", "terminate button"])
@pytest.mark.parametrize("end_in_flight", ["replaced", "stopped"])
def test_staff_ending_a_session_whose_failing_end_is_in_flight_leaves_nothing_billing(
    live_fake: FakeUpstream,
    avaturn: AvaturnOverrides,
    user: Any,
    django_user_model: Any,
    end_in_flight: str,
    staff_action: str,
) -> None:
    """The visitor's session is being ended (a second tab replaces it, or Stop), and
    Avaturn answers that terminate 503 three times, a second apart; a second in, staff
    stop it. The failed end must not put the row back to live: its heartbeats would
    keep answering 204, and no expiry run would end it before its max_duration.
    """
    avaturn(AVATURN_TIMEOUT=5, TERMINATE_RETRIES=2)
    browser = _browser(user)
    session_id = csrf_json(browser, "post", "/avaturn/sessions/").json()["session_id"]
    assert _heartbeat(browser, session_id).status_code == 204
    row = Session.objects.get(session_id=session_id)
    staff = _staff(django_user_model)
    live_fake.fail(AVATURN_TERMINATE, status=503, times=3, delay=1.0)
    answers: list[Any] = []

    def end() -> None:
        try:
            tab = _browser(user)
            if end_in_flight == "replaced":  # a second tab's start
                answers.append(csrf_json(tab, "post", "/avaturn/sessions/"))
            else:  # the owner presses Stop
                answers.append(csrf_json(tab, "delete", f"/avaturn/sessions/{session_id}/"))
        finally:
            connection.close()

    ender = threading.Thread(target=end)
    ender.start()
    # A second in: the first of the three attempts has reached Avaturn.
    assert wait_until(lambda: len(live_fake.requests_for(AVATURN_TERMINATE)) >= 1)
    _staff_acts(staff_action, staff, row)
    ender.join(timeout=30)
    assert not ender.is_alive()

    # All three attempts failed, and the session still runs upstream...
    assert len(live_fake.requests_for(AVATURN_TERMINATE)) == 3
    assert answers and answers[0].status_code >= 500
    assert live_fake.live_session_ids() == {session_id}
    # ...but its row is not live again: its heartbeats are refused...
    assert _heartbeat(browser, session_id).status_code == 409
    assert not Session.objects.filter(status=SessionStatus.LIVE).exists()
    row.refresh_from_db()
    assert row.status == SessionStatus.ENDING
    assert row.awaiting_retry
    if staff_action == "kill switch":
        assert row.end_reason == EndReason.SHUTDOWN

    # ...and the next expiry run retries it, and counts it.
    report = expire_sessions()
    assert report.tally[Outcome.TERMINATED] == 1
    row.refresh_from_db()
    assert (row.status, row.awaiting_retry) == (SessionStatus.ENDED, False)
    assert_no_orphans(live_fake)


def test_a_terminate_failing_before_the_kill_switch_flips_is_ended_by_its_sweep(
    live_fake: FakeUpstream, settings: Any, user: Any, django_user_model: Any
) -> None:
    """The other order: the failed end put the row back to live first, and the sweep ends it."""
    browser = _browser(user)
    session_id = csrf_json(browser, "post", "/avaturn/sessions/").json()["session_id"]
    live_fake.fail(AVATURN_TERMINATE, status=503)  # (no retries: FAST_TIMEOUTS)
    stop = csrf_json(browser, "delete", f"/avaturn/sessions/{session_id}/")
    assert stop.status_code == 502
    assert Session.objects.get(session_id=session_id).status == SessionStatus.LIVE

    _staff_acts("kill switch", _staff(django_user_model), Session.objects.get())

    row = Session.objects.get(session_id=session_id)
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.SHUTDOWN)
    assert_no_orphans(live_fake)
