"""Spend controls: kill switch, site-wide cap, per-user quotas, usage, transcripts."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connections, transaction
from django.utils import timezone

from django_avaturn import services
from django_avaturn.models import Session, SessionStatus, Transcript, sessions_database
from django_avaturn.spend import limits
from tests.helpers import LIST_URL, AvaturnOverrides, at, csrf_delete, csrf_post, past_session

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc


# ------------------------------------------------------------------ kill switch


def test_kill_switch_setting_refuses_before_spending(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(SESSIONS_ENABLED=False)
    response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 503
    assert response.json()["code"] == "sessions_disabled"
    assert upstream.openai.requests == []
    assert Session.objects.count() == 0


def test_kill_switch_row_refuses_and_can_be_turned_back_on(api_client: Any, upstream: Any) -> None:
    limits.set_sessions_enabled(False, reason="billing incident")
    assert csrf_post(api_client, LIST_URL, {}).json()["code"] == "sessions_disabled"
    limits.set_sessions_enabled(True)
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201


def test_a_session_the_kill_switch_cannot_terminate_is_never_live_again(
    api_client: Any, upstream: Any
) -> None:
    from django_avaturn.models import EndReason
    from django_avaturn.sessions.ending import end_sessions
    from django_avaturn.sessions.expiry import expire_sessions

    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    heartbeat = f"/avaturn/sessions/{session_id}/heartbeat/"
    upstream.avaturn.on_delete(503)

    limits.set_sessions_enabled(False, reason="runaway spend")
    tally = end_sessions(Session.objects.active(), reason=EndReason.SHUTDOWN)

    assert tally.failed == 1
    assert csrf_post(api_client, heartbeat).status_code == 409
    row = Session.objects.get()
    assert (row.status, row.end_reason) == (SessionStatus.ENDING, EndReason.SHUTDOWN)
    assert row.awaiting_retry
    # The next expiry run retries it (Avaturn answers again).
    upstream.avaturn.on_delete(200, {})
    assert expire_sessions().tally.ended == 1
    assert Session.objects.get().status == SessionStatus.ENDED


def test_a_visitors_failed_stop_under_the_kill_switch_waits_for_the_expiry_command(
    api_client: Any, upstream: Any
) -> None:
    """A Stop whose terminate fails goes back to live for the widget to retry, unless
    the kill switch is off: then it stays ending, with the switch as its reason."""
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    upstream.avaturn.on_delete(503)
    limits.set_sessions_enabled(False)

    assert csrf_delete(api_client, f"/avaturn/sessions/{session_id}/").status_code == 502

    row = Session.objects.get()
    assert (row.status, row.end_reason) == (SessionStatus.ENDING, "shutdown")
    assert row.awaiting_retry
    # The widget's retry of Stop: the end is the expiry command's now, and that is no error.
    assert csrf_delete(api_client, f"/avaturn/sessions/{session_id}/").status_code == 204


# ------------------------------------------------------------------ site-wide cap


@pytest.fixture
def many_users(django_user_model: Any) -> list[Any]:
    return [
        django_user_model.objects.create_user(email=f"u{i}@example.com", password="pw")
        for i in range(3)
    ]


def client_for(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_site_cap_at_and_around_its_boundary(
    upstream: Any, avaturn: AvaturnOverrides, many_users: list[Any]
) -> None:
    avaturn(MAX_LIVE_SESSIONS=2)
    first, second, third = (client_for(u) for u in many_users)
    assert csrf_post(first, LIST_URL, {}).status_code == 201
    assert csrf_post(second, LIST_URL, {}).status_code == 201  # exactly at the cap

    refused = csrf_post(third, LIST_URL, {})
    assert refused.status_code == 503
    assert refused.json()["code"] == "site_limit_reached"
    assert refused["Retry-After"] == "60"
    assert len(upstream.openai.requests) == 2  # nothing spent on the refused one

    # A user replacing their own session does not need a free slot.
    replaced = csrf_post(first, LIST_URL, {})
    assert replaced.status_code == 201
    assert Session.objects.live().count() == 2

    # One ends: there is room again.
    live_id = Session.objects.live().filter(user=many_users[1]).get().session_id
    csrf_delete(second, f"/avaturn/sessions/{live_id}/")
    assert csrf_post(third, LIST_URL, {}).status_code == 201


def test_site_cap_counts_sessions_still_ending(
    upstream: Any, avaturn: AvaturnOverrides, many_users: list[Any]
) -> None:
    """A session whose terminate is pending (or failed, left for a retry) may still be billed."""
    avaturn(MAX_LIVE_SESSIONS=2)
    first, _second, third = (client_for(u) for u in many_users)
    assert csrf_post(first, LIST_URL, {}).status_code == 201
    # A start whose orphan Avaturn would not end, left for the expiry command.
    Session.objects.create(
        user=many_users[1],
        session_id="orphan-awaiting-retry",
        status=SessionStatus.ENDING,
        end_reason="upstream_error",
    )

    refused = csrf_post(third, LIST_URL, {})
    assert (refused.status_code, refused.json()["code"]) == (503, "site_limit_reached")

    Session.objects.filter(session_id="orphan-awaiting-retry").update(
        status=SessionStatus.FAILED, ended_at=timezone.now()
    )
    assert csrf_post(third, LIST_URL, {}).status_code == 201


def test_site_cap_setting_is_validated(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(MAX_LIVE_SESSIONS=0)
    response = csrf_post(api_client, LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")


# ------------------------------------------------------------------ quotas


def test_sessions_per_day_boundary_and_reset_time(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    avaturn(QUOTAS={"sessions_per_day": 2})
    at(monkeypatch, datetime(2026, 11, 24, 15, 0, tzinfo=UTC))
    # Yesterday's sessions and failed starts do not count.
    past_session(user, datetime(2026, 11, 23, 23, 0, tzinfo=UTC), 5)
    Session.objects.create(user=user, status=SessionStatus.FAILED)

    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    refused = csrf_post(api_client, LIST_URL, {})

    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "quota_exceeded"
    assert body["limit"] == "sessions_per_day"
    assert body["allowed"] == 2
    assert body["resets_at"] == "2026-11-25T00:00:00+00:00"
    assert refused["Retry-After"] == str(9 * 3600)
    assert len(upstream.openai.requests) == 2

    # After midnight the count starts again.
    at(monkeypatch, datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC))
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201


def test_minutes_quota_caps_the_new_sessions_max_duration(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    avaturn(QUOTAS={"minutes_per_day": 30})
    at(monkeypatch, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    past_session(user, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), 25)

    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    assert upstream.avaturn.created[-1]["max_duration"] == 5 * 60
    assert Session.objects.live().get().max_duration == 300


def test_minutes_quota_refuses_under_a_minute_left(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    avaturn(QUOTAS={"minutes_per_day": 30})
    at(monkeypatch, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    past_session(user, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), 29.5)
    refused = csrf_post(api_client, LIST_URL, {})
    assert refused.status_code == 429
    assert refused.json()["limit"] == "minutes_per_day"
    assert upstream.openai.requests == []


def test_parallel_sessions_share_the_minutes_quota(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    # Each start was given what the quota had left, not counting what the
    # sessions still running may yet use: two sessions, twice the quota.
    avaturn(QUOTAS={"minutes_per_day": 30}, MAX_LIVE_SESSIONS_PER_USER=2)
    at(monkeypatch, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    at(monkeypatch, datetime(2026, 11, 24, 12, 10, tzinfo=UTC))

    refused = csrf_post(api_client, LIST_URL, {})

    # Not "come back tomorrow": twenty minutes are unused, held by the first.
    assert (refused.status_code, refused.json()["code"]) == (409, "session_limit_reached")
    # Said as it is (one of the two sessions allowed is live): the minutes are held.
    assert refused.json()["detail"] == (
        "Your avatar sessions still running hold the rest of your minutes. "
        "Try again when one of them ends."
    )
    assert [body["max_duration"] for body in upstream.avaturn.created] == [30 * 60]
    csrf_delete(api_client, f"{LIST_URL}{Session.objects.live().get().session_id}/")
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    assert upstream.avaturn.created[-1]["max_duration"] == 20 * 60


def test_a_replaced_session_leaves_its_remaining_minutes_to_its_successor(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    avaturn(QUOTAS={"minutes_per_day": 30}, ON_SESSION_LIMIT="end_oldest")
    at(monkeypatch, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    at(monkeypatch, datetime(2026, 11, 24, 12, 10, tzinfo=UTC))

    assert csrf_post(api_client, LIST_URL, {}).status_code == 201

    # Ten minutes used by the first; the twenty it did not use go to the second.
    assert [body["max_duration"] for body in upstream.avaturn.created] == [30 * 60, 20 * 60]


def test_a_call_across_midnight_is_split_between_days(
    settings: Any, user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, datetime(2026, 11, 24, 8, 0, tzinfo=UTC))
    past_session(user, datetime(2026, 11, 23, 23, 50, tzinfo=UTC), 20)
    used = limits.usage_for(user)
    assert used.seconds == 10 * 60  # only the ten minutes after midnight
    assert used.sessions == 0  # it started yesterday


def test_live_sessions_count_up_to_now(user: Any, monkeypatch: Any) -> None:
    at(monkeypatch, datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
    past_session(user, datetime(2026, 11, 24, 9, 45, tzinfo=UTC), 0, status=SessionStatus.LIVE)
    assert limits.usage_for(user).seconds == 15 * 60


def test_the_day_is_the_current_time_zones_day(settings: Any, user: Any, monkeypatch: Any) -> None:
    # 23:30 UTC on the 24th is already 12:30 on the 25th in Auckland.
    at(monkeypatch, datetime(2026, 11, 24, 23, 30, tzinfo=UTC))
    past_session(user, datetime(2026, 11, 24, 10, 0, tzinfo=UTC), 10)
    assert limits.usage_for(user).sessions == 1
    with timezone.override(ZoneInfo("Pacific/Auckland")):
        used = limits.usage_for(user)
        assert used.sessions == 0
        assert used.resets_at == datetime(2026, 11, 26, 0, 0, tzinfo=ZoneInfo("Pacific/Auckland"))


def test_rolling_window_resets_when_the_oldest_leaves(
    avaturn: AvaturnOverrides, user: Any, monkeypatch: Any
) -> None:
    avaturn(QUOTA_WINDOW="rolling")
    now = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    at(monkeypatch, now)
    past_session(user, now - timedelta(hours=30), 10)
    past_session(user, now - timedelta(hours=20), 10)
    used = limits.usage_for(user)
    assert used.sessions == 1
    assert used.resets_at == now - timedelta(hours=20) + timedelta(days=1)


@pytest.mark.parametrize(
    ("window", "says"), [("day", "for today"), ("rolling", "of the last 24 hours")]
)
def test_the_quota_message_names_the_window(
    api_client: Any,
    upstream: Any,
    avaturn: AvaturnOverrides,
    monkeypatch: Any,
    window: str,
    says: str,
) -> None:
    at(monkeypatch, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))  # no midnight between starts
    avaturn(QUOTA_WINDOW=window, QUOTAS={"sessions_per_day": 1}, MAX_LIVE_SESSIONS_PER_USER=5)
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    refused = csrf_post(api_client, LIST_URL, {})
    assert refused.status_code == 429
    assert says in refused.json()["detail"]


def quota_by_plan(user: Any) -> dict[str, int | None]:
    return {"sessions_per_day": 1 if user.email.startswith("ada") else None}


def test_quota_hook_varies_by_user(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, other_user: Any
) -> None:
    avaturn(QUOTA_HOOK="tests.test_spend_control.quota_by_plan", MAX_LIVE_SESSIONS_PER_USER=5)
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    assert csrf_post(api_client, LIST_URL, {}).status_code == 429
    bob = client_for(other_user)
    assert [csrf_post(bob, LIST_URL, {}).status_code for _ in range(3)] == [201, 201, 201]


HOOK_SAW: list[bool] = []


def quota_noting_the_transaction(user: Any) -> dict[str, int | None]:
    HOOK_SAW.append(connections[sessions_database()].in_atomic_block)
    return {"sessions_per_day": 5}


def test_the_quota_hook_runs_outside_the_reservations_transaction(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    """A slow hook (a billing API) must hold no lock: on SQLite the reservation's write
    lock stops every writer of the site, on PostgreSQL its locks every other start."""
    HOOK_SAW.clear()
    avaturn(QUOTA_HOOK="tests.test_spend_control.quota_noting_the_transaction")
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    assert HOOK_SAW == [False]


def test_a_start_inside_a_callers_transaction_is_refused_before_anything_is_spent(
    user: Any, upstream: Any
) -> None:
    """Rolled back, the row would go while Avaturn's session ran on, unknown to every cap,
    the expiry command and the admin."""
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        services.start_session(user)
    assert upstream.openai.requests == []
    assert upstream.avaturn.created == []
    assert not Session.objects.exists()


@pytest.mark.parametrize(
    "quotas", [{"sessions_per_day": -1}, {"minutes": 5}, {"minutes_per_day": "5"}, [1]]
)
def test_bad_quotas_are_configuration_errors(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, quotas: Any
) -> None:
    avaturn(QUOTAS=quotas)
    response = csrf_post(api_client, LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (503, "not_configured")


# ------------------------------------------------------------------ usage


def test_usage_endpoint_shows_own_usage_only(
    api_client: Any, avaturn: AvaturnOverrides, user: Any, other_user: Any, monkeypatch: Any
) -> None:
    avaturn(QUOTAS={"minutes_per_day": 60})
    at(monkeypatch, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    past_session(user, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), 12)
    past_session(user, datetime(2026, 11, 22, 9, 0, tzinfo=UTC), 3)
    past_session(other_user, datetime(2026, 11, 24, 9, 0, tzinfo=UTC), 40)

    response = api_client.get("/avaturn/usage/")

    assert response.status_code == 200
    body = response.json()
    assert (body["sessions"], body["minutes"]) == (1, 12.0)
    assert body["quota"] == {"sessions_per_day": None, "minutes_per_day": 60}
    assert body["resets_at"] == "2026-11-25T00:00:00+00:00"
    days = {d["date"]: d for d in body["days"]}
    assert len(body["days"]) == 30
    assert days["2026-11-24"] == {"date": "2026-11-24", "sessions": 1, "minutes": 12.0}
    assert days["2026-11-22"]["minutes"] == 3.0
    assert days["2026-11-23"]["minutes"] == 0


def test_usage_needs_a_signed_in_user(client: Any) -> None:
    assert client.get("/avaturn/usage/").status_code == 403


# ------------------------------------------------------------------ transcripts


def transcript_url(session_id: str) -> str:
    return f"/avaturn/sessions/{session_id}/transcripts/"


def test_transcripts_are_refused_when_disabled(api_client: Any, upstream: Any) -> None:
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    response = csrf_post(api_client, transcript_url(session_id), {"role": "user", "text": "hi"})
    assert response.status_code == 404
    assert response.json()["code"] == "transcripts_disabled"
    assert Transcript.objects.count() == 0


def test_transcripts_are_stored_for_own_live_session(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    response = csrf_post(
        api_client,
        transcript_url(session_id),
        {"role": "avatar", "text": "  Hello Ada  ", "timestamp": 1_764_000_000_000},
    )
    assert response.status_code == 201
    line = Transcript.objects.get()
    assert (line.role, line.text, line.session.session_id) == ("avatar", "Hello Ada", session_id)
    assert line.spoken_at == datetime.fromtimestamp(1_764_000_000, tz=UTC)

    # Deleted with its session.
    Session.objects.filter(session_id=session_id).delete()
    assert Transcript.objects.count() == 0


def test_transcripts_refused_for_other_users_sessions(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, other_user: Any
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    Session.objects.create(user=other_user, session_id="theirs", status=SessionStatus.LIVE)
    response = csrf_post(api_client, transcript_url("theirs"), {"role": "user", "text": "x"})
    assert response.status_code == 404
    assert Transcript.objects.count() == 0


def test_transcripts_refused_long_after_the_end(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    past_session(user, timezone.now() - timedelta(hours=1), 5)
    old = Session.objects.get()
    response = csrf_post(api_client, transcript_url(old.session_id), {"role": "user", "text": "x"})
    # As a heartbeat to an ended session answers: nothing was refused to the caller.
    assert (response.status_code, response.json()["code"]) == (409, "session_ended")


@pytest.mark.parametrize(
    "payload",
    [
        {"role": "narrator", "text": "x"},
        {"role": "user"},
        {"role": "user", "text": ""},
        {"role": "user", "text": "x" * 4001},
        {"role": "user", "text": "x", "speaker": "me"},
        {"role": "user", "text": "x", "timestamp": -1},
    ],
)
def test_bad_transcripts_are_400(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, payload: Any
) -> None:
    avaturn(TRANSCRIPTS_ENABLED=True)
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    response = csrf_post(api_client, transcript_url(session_id), payload)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


def _enable_transcripts(avaturn: AvaturnOverrides, **extra: Any) -> None:
    # (extra may set the throttle rate: it wins over the None here)
    avaturn(**{"TRANSCRIPTS_ENABLED": True, "TRANSCRIPT_THROTTLE_RATE": None, **extra})


def test_a_sessions_transcript_stops_at_its_line_cap(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    _enable_transcripts(avaturn, TRANSCRIPT_MAX_LINES=3)
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    url = transcript_url(session_id)

    answers = [csrf_post(api_client, url, {"role": "user", "text": f"line {n}"}) for n in range(5)]

    assert [a.status_code for a in answers] == [201, 201, 201, 413, 413]
    refused = answers[-1].json()
    assert refused["code"] == "transcript_full" and refused["detail"]
    assert list(Transcript.objects.values_list("text", flat=True)) == ["line 0", "line 1", "line 2"]
    row = Session.objects.get(session_id=session_id)
    assert (row.transcript_lines, row.transcript_bytes) == (3, 18)
    # Another session of the same user has caps of its own.
    other = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    assert csrf_post(
        api_client, transcript_url(other), {"role": "user", "text": "x"}
    ).status_code == (201)


def test_a_sessions_transcript_stops_at_its_byte_cap_counted_in_utf8(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    _enable_transcripts(avaturn, TRANSCRIPT_MAX_BYTES=10)
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    url = transcript_url(session_id)

    # Four characters, eight bytes: "é" and "ü" are two bytes each in UTF-8.
    assert csrf_post(api_client, url, {"role": "user", "text": "éüéü"}).status_code == 201
    # Three more bytes would make eleven: refused, and nothing counted for it.
    too_many = csrf_post(api_client, url, {"role": "user", "text": "abc"})
    assert (too_many.status_code, too_many.json()["code"]) == (413, "transcript_full")
    # Two more make exactly ten: stored.
    assert csrf_post(api_client, url, {"role": "avatar", "text": "ok"}).status_code == 201
    # A line larger than the whole cap on its own never fits.
    fresh = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    assert csrf_post(
        api_client, transcript_url(fresh), {"role": "user", "text": "€" * 4}
    ).status_code == (413)

    row = Session.objects.get(session_id=session_id)
    assert (row.transcript_lines, row.transcript_bytes) == (2, 10)
    assert Transcript.objects.count() == 2


def test_transcript_lines_are_throttled_per_user_with_retry_after(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, user: Any
) -> None:
    from django.core.cache import cache

    cache.clear()
    _enable_transcripts(avaturn, TRANSCRIPT_THROTTLE_RATE="2/minute")
    first = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    second = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    try:
        answers = [
            csrf_post(api_client, transcript_url(session_id), {"role": "user", "text": "hi"})
            for session_id in (first, second, second)
        ]
    finally:
        cache.clear()

    # Per user, across their sessions: the third line is one too many.
    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].json()["code"] == "throttled"
    # A slot is kept a second past the rate's period (caches that round expiry down).
    assert 0 < int(answers[2]["Retry-After"]) <= 61
    assert Transcript.objects.count() == 2


def test_the_line_cap_holds_under_simultaneous_posts(
    live_fake: Any, avaturn: AvaturnOverrides, user: Any
) -> None:
    """Real threads, one connection each: the cap is checked where the count is raised."""
    from django_avaturn import services
    from tests.live_fake import csrf_json, run_threads

    _enable_transcripts(avaturn, TRANSCRIPT_MAX_LINES=5, TRANSCRIPT_MAX_BYTES=1000)
    session_id = services.start_session(user).session.session_id

    def post(index: int) -> int:
        from rest_framework.test import APIClient

        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user)
        body = {"role": "user", "text": f"line number {index:02d}"}
        return int(csrf_json(client, "post", transcript_url(session_id), body).status_code)

    results = run_threads(post, 16)

    assert sorted(results) == [201] * 5 + [413] * 11, results
    assert Transcript.objects.count() == 5
    row = Session.objects.get(session_id=session_id)
    assert (row.transcript_lines, row.transcript_bytes) == (5, 5 * len("line number 00"))


def test_a_line_for_a_session_deleted_mid_request_is_404_not_a_full_transcript(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    """The row goes (with its user) between the session's lookup and the line's count."""
    _enable_transcripts(avaturn)
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    row = Session.objects.get(session_id=session_id)
    deleted: list[int] = []

    def delete_the_row_first(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not deleted and sql.startswith("UPDATE") and "transcript_lines" in sql:
            deleted.append(Session.objects.filter(pk=row.pk).delete()[0])
        return execute(sql, params, many, context)

    with connections[sessions_database()].execute_wrapper(delete_the_row_first):
        response = csrf_post(api_client, transcript_url(session_id), {"role": "user", "text": "x"})

    assert deleted == [1]
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert Transcript.objects.count() == 0
