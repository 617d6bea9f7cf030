"""Usage has one definition: the quota, ``GET usage/`` and the admin read the same figures.

The rule (``django_avaturn.spend.usage``): every start counts but one that failed
before it went live, on the day it was made; talk time runs from
``started_at`` to ``ended_at`` (or now) and is split at each midnight of the
current time zone. These run on SQLite and, with ``AVATURN_TEST_DATABASE_URL``,
on PostgreSQL: the time arithmetic is the database's own.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.spend import limits, usage
from tests.helpers import CHANGELIST, at, logged_in, past_session

pytestmark = pytest.mark.django_db(transaction=True)

UTC = dt_timezone.utc
USAGE_PAGE = f"{CHANGELIST}usage/"
# 08:00 on the 24th; the call below ran from 23:50 the day before to 00:10.
NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
ACROSS_MIDNIGHT = datetime(2026, 11, 23, 23, 50, tzinfo=UTC)


@pytest.fixture
def admin_client(django_user_model: Any) -> Client:
    root = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    return logged_in(root)


def stopped_before_live(user: Any, when: datetime) -> Session:
    """A start replaced (or stopped by staff) before Avaturn created its session."""
    return Session.objects.create(
        user=user,
        status=SessionStatus.ENDED,
        end_reason=EndReason.REPLACED,
        created_at=when,
        ended_at=when + timedelta(seconds=2),
    )


def failed_start(user: Any, when: datetime, **fields: Any) -> Session:
    fields.setdefault("status", SessionStatus.FAILED)
    fields.setdefault("end_reason", EndReason.UPSTREAM_ERROR)
    return Session.objects.create(user=user, created_at=when, **fields)


# ------------------------------------------------------------------ the API agrees with itself


def test_usage_minutes_agree_with_todays_entry_for_a_call_across_midnight(
    api_client: Any, user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, NOW)
    past_session(user, ACROSS_MIDNIGHT, 20)

    body = api_client.get("/avaturn/usage/").json()

    today, yesterday = body["days"][-1], body["days"][-2]
    assert today["date"] == "2026-11-24"
    assert (body["sessions"], body["minutes"]) == (today["sessions"], today["minutes"])
    # Ten minutes each side of midnight; the session counts on the day it began.
    assert (today["sessions"], today["minutes"]) == (0, 10.0)
    assert (yesterday["sessions"], yesterday["minutes"]) == (1, 10.0)


def test_usage_sessions_agree_with_todays_entry_for_starts_that_never_went_live(
    api_client: Any, user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, NOW)
    stopped_before_live(user, NOW - timedelta(hours=1))  # counts: it was a start
    Session.objects.create(user=user, status=SessionStatus.STARTING)  # in flight: counts
    failed_start(user, NOW - timedelta(hours=2))  # never counts

    body = api_client.get("/avaturn/usage/").json()

    assert body["sessions"] == body["days"][-1]["sessions"] == 2
    assert body["minutes"] == body["days"][-1]["minutes"] == 0.0


def test_a_live_session_counts_up_to_the_same_now_in_both_figures(
    api_client: Any, user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, NOW)
    past_session(user, NOW - timedelta(minutes=7, seconds=12), 0, status=SessionStatus.LIVE)

    body = api_client.get("/avaturn/usage/").json()

    assert body["minutes"] == body["days"][-1]["minutes"] == 7.2


def test_usage_agrees_in_the_callers_time_zone(
    api_client: Any, user: Any, monkeypatch: Any
) -> None:
    # 08:00 UTC is 21:00 in Auckland; Auckland's midnight was 11:00 UTC on the 23rd.
    auckland = ZoneInfo("Pacific/Auckland")
    at(monkeypatch, NOW)
    past_session(user, datetime(2026, 11, 23, 10, 50, tzinfo=UTC), 30)

    with timezone.override(auckland):
        body = api_client.get("/avaturn/usage/").json()

    today, yesterday = body["days"][-1], body["days"][-2]
    assert body["window_start"] == "2026-11-24T00:00:00+13:00"
    assert today["date"] == "2026-11-24"
    assert (body["sessions"], body["minutes"]) == (today["sessions"], today["minutes"]) == (0, 20.0)
    assert (yesterday["date"], yesterday["minutes"]) == ("2026-11-23", 10.0)


# ------------------------------------------------------------------ which starts count


@pytest.mark.parametrize("reason", [EndReason.UPSTREAM_ERROR, EndReason.SITE_ERROR])
def test_a_failed_start_never_counts_not_even_while_its_orphan_awaits_a_retry(
    user: Any, monkeypatch: Any, reason: str
) -> None:
    at(monkeypatch, NOW)
    orphan = failed_start(
        user,
        NOW - timedelta(hours=1),
        status=SessionStatus.ENDING,
        session_id="orphan",
        end_reason=reason,
    )
    assert limits.usage_for(user).sessions == 0
    # The expiry command's retry terminates it and records it failed: still none.
    Session.objects.filter(pk=orphan.pk).update(status=SessionStatus.FAILED, ended_at=NOW)
    assert limits.usage_for(user).sessions == 0


def test_a_session_that_went_live_counts_whatever_its_final_status(
    user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, NOW)
    for n, status in enumerate((SessionStatus.ENDED, SessionStatus.EXPIRED, SessionStatus.FAILED)):
        past_session(user, NOW - timedelta(hours=2, minutes=n), 5, status=status)
    past_session(
        user, NOW - timedelta(hours=1), 0, status=SessionStatus.ENDING, end_reason=EndReason.CLIENT
    )

    used = limits.usage_for(user)

    assert used.sessions == 4
    assert used.seconds == 3 * 5 * 60 + 3600  # the one ending counts up to now


# ------------------------------------------------------------------ the admin reads the same


def test_the_admin_shows_what_the_quota_counts(
    admin_client: Client, user: Any, other_user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, NOW)
    past_session(user, ACROSS_MIDNIGHT, 20)
    past_session(user, NOW - timedelta(hours=1), 5)
    stopped_before_live(user, NOW - timedelta(minutes=30))
    failed_start(user, NOW - timedelta(minutes=20))
    past_session(other_user, NOW - timedelta(hours=1), 40)
    quota = limits.usage_for(user)
    assert (quota.sessions, quota.seconds) == (2, 15 * 60)

    page = admin_client.get(USAGE_PAGE, {"user__id__exact": user.pk})

    today = page.context["bars"][-1].title
    assert today == f"2026-11-24: {usage.describe_duration(quota.seconds)}, 2 sessions"
    ((row),) = page.context["per_user"]
    # The whole selection: all three of the user's sessions that count, 25 minutes.
    assert (row["sessions"], row["seconds"]) == (3, 25 * 60)
    summary = admin_client.get(CHANGELIST, {"user__id__exact": user.pk}).context["usage_summary"]
    assert (summary["sessions"], summary["minutes"]) == (3, 25.0)


def test_the_admin_chart_splits_a_call_at_midnight(
    admin_client: Client, user: Any, monkeypatch: Any
) -> None:
    at(monkeypatch, NOW)
    past_session(user, ACROSS_MIDNIGHT, 20)

    bars = admin_client.get(USAGE_PAGE).context["bars"]

    assert [bar.title for bar in bars[-2:]] == [
        "2026-11-23: 10 minutes, 1 session",
        "2026-11-24: 10 minutes, 0 sessions",
    ]


# ------------------------------------------------------------------ one query, whatever the rows


def test_the_figures_cost_a_fixed_number_of_queries(
    admin_client: Client, user: Any, other_user: Any, monkeypatch: Any
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    at(monkeypatch, NOW)

    def counted() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as page:
            assert admin_client.get(USAGE_PAGE).status_code == 200
        with CaptureQueriesContext(connection) as quota:
            limits.usage_for(user)
        return len(page.captured_queries), len(quota.captured_queries)

    past_session(user, NOW - timedelta(hours=1), 5)
    few = counted()
    for days_ago in range(1, 41):
        start = NOW - timedelta(days=days_ago, minutes=30)
        past_session(user if days_ago % 2 else other_user, start, 45)
    assert counted() == few
    assert few[1] == 1  # the quota's figures: one statement


def test_a_long_series_splits_into_queries_and_still_adds_up(user: Any, monkeypatch: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    at(monkeypatch, NOW)
    # Across the midnight between the series' two queries (31 days, then 9).
    boundary = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)  # the second query's first day
    past_session(user, boundary - timedelta(minutes=30), 45)
    past_session(user, NOW - timedelta(days=45), 10)  # before the series

    with CaptureQueriesContext(connection) as captured:
        days = usage.daily_usage(Session.objects.all(), days=40)

    assert len(captured.captured_queries) == 2
    assert [day.day for day in days] == [date(2026, 10, 16) + timedelta(n) for n in range(40)]
    by_day = {day.day: (day.sessions, day.minutes) for day in days}
    assert by_day[date(2026, 11, 15)] == (1, 30.0)
    assert by_day[date(2026, 11, 16)] == (0, 15.0)
    first = datetime(2026, 10, 16, tzinfo=UTC)
    whole = usage.window_usage(Session.objects.all(), since=first, until=None)
    assert (sum(d.sessions for d in days), sum(d.seconds for d in days)) == (1, whole.seconds)
    with pytest.raises(ValueError):
        usage.daily_usage(Session.objects.all(), days=0)


# ------------------------------------------------------------------ properties

ZONES = ("UTC", "Pacific/Auckland", "Europe/Berlin", "America/New_York")
FIRST = date(2026, 10, 20)  # 30 days back from mid-November covers two DST changes
sessions_strategy = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40 * 24 * 60),  # created, minutes after FIRST
        st.one_of(st.none(), st.integers(min_value=0, max_value=30 * 60)),  # went live after (s)
        st.one_of(st.none(), st.integers(min_value=0, max_value=30 * 60 * 60)),  # talked (s)
        st.sampled_from(SessionStatus.values),
    ),
    max_size=8,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=sessions_strategy,
    now_minutes=st.integers(min_value=25 * 24 * 60, max_value=45 * 24 * 60),
    zone=st.sampled_from(ZONES),
)
def test_days_add_up_to_the_window_and_today_is_the_quotas_day(
    user: Any, monkeypatch: Any, rows: list[Any], now_minutes: int, zone: str
) -> None:
    tz = ZoneInfo(zone)
    base = datetime.combine(FIRST, datetime.min.time(), tzinfo=UTC)
    now = base + timedelta(minutes=now_minutes, microseconds=now_minutes * 7)
    at(monkeypatch, now)
    Session.objects.all().delete()
    for created_minutes, live_after, talked, status in rows:
        created = base + timedelta(minutes=created_minutes, microseconds=created_minutes)
        if created > now:
            continue
        started = None if live_after is None else created + timedelta(seconds=live_after)
        if started is not None and started > now:
            started = None
        ended = None
        if started is not None and talked is not None:
            ended = min(started + timedelta(seconds=talked), now)
        Session.objects.create(
            user=user, status=status, created_at=created, started_at=started, ended_at=ended
        )

    with timezone.override(tz):
        days = usage.daily_usage(Session.objects.all(), days=30, now=now)
        first_day = datetime.combine(days[0].day, datetime.min.time(), tzinfo=tz)
        whole = usage.window_usage(Session.objects.all(), since=first_day, until=None, now=now)
        quota = limits.usage_for(user, now=now)

    assert [d.day for d in days][-1] == now.astimezone(tz).date()
    assert sum(d.sessions for d in days) == whole.sessions
    assert sum(d.seconds for d in days) == pytest.approx(whole.seconds, abs=1e-3)
    assert (days[-1].sessions, days[-1].seconds) == (quota.sessions, quota.seconds)
    # The per-user table and the summary count the same sessions and talk.
    summary = usage.summarize(Session.objects.all(), now=now)
    per_user = usage.usage_by_user(Session.objects.all(), now=now)
    assert [(r["sessions"], r["seconds"]) for r in per_user] == (
        [(summary.sessions, summary.seconds)] if summary.sessions else []
    )
