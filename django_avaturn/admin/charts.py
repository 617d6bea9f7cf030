"""A bar chart of daily minutes as plain SVG geometry, for the admin's usage page.

No JavaScript and no plotting library: the template draws ``<rect>``s from
these numbers, so the page works under a strict Content-Security-Policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from django_avaturn.spend.usage import DayUsage, describe_duration

WIDTH = 720
HEIGHT = 200
AXIS = 20  # room under the bars for the date labels


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    title: str


def daily_bars(days: Sequence[DayUsage]) -> tuple[list[Bar], float]:
    """Bars for ``days`` and the largest value in minutes (the chart's scale)."""
    if not days:
        return [], 0.0
    # Scaled on seconds: a day of a few seconds still gets a bar.
    peak_seconds = max(day.seconds for day in days)
    slot = WIDTH / len(days)
    usable = HEIGHT - AXIS
    bars = []
    for index, day in enumerate(days):
        height = usable * day.seconds / peak_seconds if peak_seconds else 0.0
        bars.append(
            Bar(
                x=round(index * slot + slot * 0.1, 1),
                y=round(usable - height, 1),
                width=round(slot * 0.8, 1),
                height=round(height, 1),
                # A label every week keeps thirty bars legible.
                label=day.day.strftime("%d %b") if index % 7 == 0 else "",
                title=_("%(day)s: %(talked)s, %(sessions)s")
                % {
                    "day": day.day.isoformat(),
                    "talked": describe_duration(day.seconds),
                    "sessions": ngettext("%(count)d session", "%(count)d sessions", day.sessions)
                    % {"count": day.sessions},
                },
            )
        )
    return bars, round(peak_seconds / 60, 1)
