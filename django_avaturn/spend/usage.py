"""Usage: sessions and talk time, the one definition the whole app uses.

The quotas (``limits``), ``GET usage/`` and the admin's summary, chart and
per-user table all read their figures from the functions here, so what a
user or staff read is what the quota enforces.

* **Which sessions count**: every start but a failed one. A row counts if it
  went live (it has a ``started_at``, whatever its status now: ended,
  expired, ending, even failed later), or if its start has not failed: one
  still in flight counts (or concurrent starts could all slip under a
  quota), and so does one stopped before it went live (replaced, ended by
  staff or the kill switch). A start that failed before going live never
  counts: status ``failed``, or still ``ending`` with reason
  ``upstream_error`` or ``site_error`` while the expiry command retries its
  orphan's terminate (it ends ``failed``).
* **When a session counts**: at its ``created_at``, when its start began.
* **Talk time**: from ``started_at`` (Avaturn created the session) to
  ``ended_at``, or to now while it has none; zero for a start that never
  went live.
* **Windows and days**: a figure over an interval counts the sessions
  created in it and the part of each talk inside it, up to now. Days are
  calendar days in the current time zone (``timezone.activate``), so a call
  across midnight is split between the two days, the days of a range add up
  to the range's total, and today's figure is what a ``"day"`` quota window
  counts.

Everything is computed in SQL, in a fixed number of queries whatever the
number of rows: one for a window (the quota's, inside the start's
reservation), one per 31 days of a daily series, one for the per-user table.
Day boundaries are computed here, in Python, so they mean the same on every
database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from django.db.models import (
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Min,
    Q,
    QuerySet,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce, Greatest, Least
from django.utils import timezone
from django.utils.translation import gettext, ngettext

from django_avaturn.models import EndReason, Session, SessionStatus

# Days per query of a daily series: two aggregates each, well under every
# database's limit on a query's parameters (999 on older SQLite).
_DAYS_PER_QUERY = 31


def counted() -> Q:
    """The rows that count as sessions: every start but one that failed before going live."""
    failed_start = Q(status=SessionStatus.FAILED) | Q(
        end_reason__in=(EndReason.UPSTREAM_ERROR, EndReason.SITE_ERROR)
    )
    return Q(started_at__isnull=False) | ~failed_start


def day_start(day: date, zone: tzinfo) -> datetime:
    """The first instant of ``day`` in ``zone`` (where DST skips midnight: its first hour)."""
    return timezone.make_aware(datetime.combine(day, time.min), zone)


def _created_in(since: datetime | None, until: datetime | None) -> Q:
    """Rows created in ``[since, until)`` (``None``: unbounded on that side)."""
    inside = Q()
    if since is not None:
        inside &= Q(created_at__gte=since)
    if until is not None:
        inside &= Q(created_at__lt=until)
    return inside


def _talk(since: datetime | None, until: datetime) -> Sum:
    """Talk time inside ``[since, until)``: ``until`` at most now, after ``since``.

    Each row adds ``min(ended_at or until, until) - max(started_at, since)``
    where that is positive; a row that never went live adds nothing.
    """
    begin: Any = F("started_at") if since is None else Greatest("started_at", Value(since))
    end = Least(Coalesce("ended_at", Value(until)), Value(until))
    inside = Q(started_at__lt=until) & (Q(ended_at__isnull=True) | Q(ended_at__gt=begin))
    return Sum(ExpressionWrapper(end - begin, output_field=DurationField()), filter=inside)


def _seconds(talked: Any) -> float:
    return talked.total_seconds() if isinstance(talked, timedelta) else 0.0


@dataclass(frozen=True)
class WindowUsage:
    """Sessions and seconds talked in a window, and when its first counted session began."""

    sessions: int
    seconds: float
    first_start: datetime | None

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


def window_usage(
    queryset: QuerySet[Session],
    *,
    since: datetime,
    until: datetime | None,
    now: datetime | None = None,
) -> WindowUsage:
    """The figures of ``queryset`` in ``[since, until)`` (``until=None``: no end), in one query.

    Talk time stops at ``now`` (default: the current time). Sessions count by
    when they were created, so a start made at ``now`` is in a window that
    ends later (or has no end).
    """
    now = now or timezone.now()
    in_window = counted() & _created_in(since, until)
    aggregates: dict[str, Any] = {
        "sessions": Count("pk", filter=in_window),
        "first_start": Min("created_at", filter=in_window),
    }
    talk_until = now if until is None else min(until, now)
    if since < talk_until:  # else nothing was talked in it (yet)
        aggregates["talked"] = _talk(since, talk_until)
    totals = queryset.aggregate(**aggregates)
    return WindowUsage(
        sessions=totals["sessions"],
        seconds=_seconds(totals.get("talked")),
        first_start=totals["first_start"],
    )


@dataclass(frozen=True)
class DayUsage:
    day: date
    sessions: int
    seconds: float

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


def daily_usage(
    queryset: QuerySet[Session], *, days: int = 30, now: datetime | None = None
) -> list[DayUsage]:
    """One entry per calendar day of the last ``days`` days, today last, zero-filled.

    Each day is ``window_usage`` over that day, so the entries add up to the
    figures of the whole range, and today's are those of a ``"day"`` quota
    window. One query per 31 days.
    """
    if days < 1:
        raise ValueError("days must be at least 1.")
    now = now or timezone.now()
    zone = timezone.get_current_timezone()
    today = timezone.localtime(now, zone).date()
    calendar = [today - timedelta(days=days - 1 - offset) for offset in range(days)]
    result: list[DayUsage] = []
    for chunk in _chunks(calendar, _DAYS_PER_QUERY):
        bounds = [day_start(day, zone) for day in (*chunk, chunk[-1] + timedelta(days=1))]
        aggregates: dict[str, Any] = {}
        for index in range(len(chunk)):
            since, until = bounds[index], bounds[index + 1]
            aggregates[f"sessions_{index}"] = Count(
                "pk", filter=counted() & _created_in(since, until)
            )
            if since < now:  # else the day has not begun
                aggregates[f"talked_{index}"] = _talk(since, min(until, now))
        # Only the rows the range can touch, so the aggregates scan no others.
        first, last = bounds[0], bounds[-1]
        touching = _created_in(first, last) | (
            Q(started_at__lt=min(last, now)) & (Q(ended_at__isnull=True) | Q(ended_at__gt=first))
        )
        totals = queryset.filter(touching).aggregate(**aggregates)
        result.extend(
            DayUsage(
                day=day,
                sessions=totals[f"sessions_{index}"],
                seconds=_seconds(totals.get(f"talked_{index}")),
            )
            for index, day in enumerate(chunk)
        )
    return result


def _chunks(items: Sequence[date], size: int) -> list[Sequence[date]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@dataclass(frozen=True)
class Summary:
    """Sessions, seconds talked (running ones up to now) and sessions live now."""

    sessions: int
    seconds: float
    live: int

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


def summarize(queryset: QuerySet[Session], *, now: datetime | None = None) -> Summary:
    """The ``Summary`` of every session in ``queryset``, whenever it ran, in one query."""
    totals = queryset.aggregate(
        sessions=Count("pk", filter=counted()),
        talked=_talk(None, now or timezone.now()),
        live=Count("pk", filter=Q(status=SessionStatus.LIVE)),
    )
    return Summary(
        sessions=totals["sessions"], seconds=_seconds(totals["talked"]), live=totals["live"]
    )


def usage_by_user(
    queryset: QuerySet[Session], *, limit: int = 100, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Sessions and seconds talked per user in ``queryset``, most talk first, in one query."""
    return _usage_by("user_id", queryset, limit=limit, now=now)


def usage_by_engine(
    queryset: QuerySet[Session], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Sessions and seconds talked per conversation engine in ``queryset``, in one query."""
    return _usage_by("engine", queryset, limit=None, now=now)


def _usage_by(
    column: str, queryset: QuerySet[Session], *, limit: int | None, now: datetime | None
) -> list[dict[str, Any]]:
    """``{column, "sessions", "seconds"}`` per value of ``column``, most talk first."""
    rows = (
        queryset.filter(counted())
        .values(column)
        .annotate(
            sessions=Count("pk"),
            talked=Coalesce(
                _talk(None, now or timezone.now()),
                Value(timedelta(0)),
                output_field=DurationField(),
            ),
        )
        .order_by("-talked", "-sessions", column)
    )
    return [
        {column: row[column], "sessions": row["sessions"], "seconds": _seconds(row["talked"])}
        for row in (rows[:limit] if limit is not None else rows)
    ]


def describe_duration(seconds: float) -> str:
    """``seconds`` as a person says it: "1 second", "2 minutes, 5 seconds", "3 hours, 1 minute".

    The two largest units, rounded down to whole seconds (a 0.4-second call is "0 seconds").
    """
    total = max(int(seconds), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    units = [
        ngettext("%(count)d hour", "%(count)d hours", hours) % {"count": hours},
        ngettext("%(count)d minute", "%(count)d minutes", minutes) % {"count": minutes},
        ngettext("%(count)d second", "%(count)d seconds", secs) % {"count": secs},
    ]
    first = 0 if hours else 1 if minutes else 2
    shown = [units[first]]
    if first < 2 and (hours, minutes, secs)[first + 1]:
        shown.append(units[first + 1])
    return gettext(", ").join(shown)
