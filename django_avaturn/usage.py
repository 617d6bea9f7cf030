"""Usage accounting from the recorded sessions: minutes and sessions per day.

A session counts on the day (in the current time zone) it started, for its
whole length; a live one counts up to now. Quotas (``limits``) split a call
across midnight instead, because they must be exact at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum, Value
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone
from django.utils.translation import gettext, ngettext

from django_avaturn.models import Session, SessionStatus


@dataclass(frozen=True)
class DayUsage:
    day: date
    sessions: int
    seconds: float

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


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


def _talked(now: datetime) -> ExpressionWrapper[CombinedExpression]:
    return ExpressionWrapper(
        Coalesce(F("ended_at"), Value(now)) - F("started_at"), output_field=DurationField()
    )


@dataclass(frozen=True)
class Summary:
    """Started sessions, seconds talked (live ones up to now) and sessions live now."""

    sessions: int
    seconds: float
    live: int

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


def summarize(queryset: QuerySet[Session]) -> Summary:
    """The ``Summary`` of ``queryset``, in one query."""
    started = Q(started_at__isnull=False)
    totals = queryset.aggregate(
        sessions=Count("pk", filter=started),
        talked=Sum(_talked(timezone.now()), filter=started),
        live=Count("pk", filter=Q(status=SessionStatus.LIVE)),
    )
    talked = totals["talked"]
    return Summary(
        sessions=totals["sessions"],
        seconds=talked.total_seconds() if isinstance(talked, timedelta) else 0.0,
        live=totals["live"],
    )


def total_seconds(queryset: QuerySet[Session]) -> float:
    """Seconds talked in all started sessions of ``queryset`` (live ones up to now)."""
    return summarize(queryset).seconds


def daily_usage(queryset: QuerySet[Session], *, days: int = 30) -> list[DayUsage]:
    """One entry per day of the last ``days`` days (oldest first), zero-filled."""
    now = timezone.now()
    zone = timezone.get_current_timezone()
    today = timezone.localtime(now, zone).date()
    first = today - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first, datetime.min.time()), zone)
    rows = (
        queryset.filter(started_at__gte=since)
        .annotate(day=TruncDate("started_at", tzinfo=zone))
        .values("day")
        .annotate(seconds=Sum(_talked(now)), sessions=Sum(Value(1)))
        .order_by("day")
    )
    found: dict[date, Any] = {row["day"]: row for row in rows}
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = found.get(day)
        seconds = row["seconds"].total_seconds() if row and row["seconds"] else 0.0
        result.append(DayUsage(day=day, sessions=row["sessions"] if row else 0, seconds=seconds))
    return result


def usage_by_user(queryset: QuerySet[Session], *, limit: int = 100) -> list[dict[str, Any]]:
    """Started sessions and seconds per user, heaviest first."""
    rows = (
        queryset.filter(started_at__isnull=False)
        .values("user_id")
        .annotate(seconds=Sum(_talked(timezone.now())), sessions=Sum(Value(1)))
        .order_by("-seconds")[:limit]
    )
    return [
        {
            "user_id": row["user_id"],
            "sessions": row["sessions"],
            "seconds": row["seconds"].total_seconds() if row["seconds"] else 0.0,
        }
        for row in rows
    ]
