"""Spend controls checked on every start: kill switch, site-wide cap, per-user quotas.

All of them run inside the start's slot reservation (see ``sessions.starting``), so
they see the same serialised view of the table as the per-user cap and two
concurrent starts cannot both squeeze under a limit.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import (
    QuotaExceeded,
    SessionLimitReached,
    SessionsDisabled,
    SiteLimitReached,
)
from django_avaturn.logs import site_code_failed
from django_avaturn.models import ServiceSwitch, Session, sessions_database
from django_avaturn.spend import usage
from django_avaturn.validation import (
    Quota,
    parse_quota,
)

# Any fixed 64-bit numbers: the keys of PostgreSQL advisory locks. The first
# serialises starts while a site-wide cap is configured; starts hold the
# second shared while they reserve, and flipping the kill switch holds it
# exclusively (see hold_switch()).
_SITE_CAP_LOCK_KEY = 0x41564154_55524E31
_SWITCH_LOCK_KEY = 0x41564154_55524E32

# --------------------------------------------------------------------------- kill switch


def _switch() -> QuerySet[ServiceSwitch]:
    # Where the admin writes it: a start must see it switched off at once, and
    # the admin's page its state with the reason written beside it.
    written = router.db_for_write(ServiceSwitch)
    return ServiceSwitch.objects.using(written).filter(pk=ServiceSwitch.SINGLETON_PK)


def switch_row() -> ServiceSwitch | None:
    """The admin's kill switch row, None until it is first flipped (sessions enabled)."""
    return _switch().first()


def sessions_enabled() -> bool:
    """Whether new sessions may start: the setting and the admin's switch must both allow it."""
    if not avaturn_settings.SESSIONS_ENABLED:
        return False
    return all(_switch().values_list("sessions_enabled", flat=True))  # no row yet: enabled


def enabled_with(switch: bool | None) -> bool:
    """``sessions_enabled()`` given the switch row's ``sessions_enabled`` as read (None: no row)."""
    return bool(avaturn_settings.SESSIONS_ENABLED) and switch is not False


def ensure_enabled() -> None:
    if not sessions_enabled():
        raise SessionsDisabled()


def hold_switch(*, exclusive: bool = False) -> None:
    """Order this transaction against kill-switch flips (PostgreSQL only).

    A start reads the switch, then commits its STARTING row; the admin flips
    the switch, then ends every active row. Under READ COMMITTED nothing
    orders the two: a start that read "on" just before the flip could commit
    its row after the admin's sweep had looked, and go live after the kill.
    Starts hold this lock shared for their reservation (they never wait for
    each other) and a flip holds it exclusively, so a flip waits for the
    reservations in flight, and a start that comes later waits for the flip
    and reads its outcome. SQLite's single write lock already orders them.
    """
    _advisory_lock(_SWITCH_LOCK_KEY, shared=not exclusive)


def clean_reason(reason: str) -> str:
    """``reason`` as ``ServiceSwitch.reason`` holds it, whoever passed it.

    No control characters (PostgreSQL refuses a NUL in text, and the others
    would garble a log line or a page): tabs and line breaks become spaces,
    the rest go, as do lone surrogates (no encoding holds them). Cut to the
    field's ``max_length``.
    """
    kept = (
        " " if char in "\t\n\r" else char
        for char in reason
        if char in "\t\n\r" or unicodedata.category(char) not in ("Cc", "Cs")
    )
    return "".join(kept)[: ServiceSwitch._meta.get_field("reason").max_length]


def set_sessions_enabled(enabled: bool, *, by: Any = None, reason: str = "") -> ServiceSwitch:
    """Allow new sessions (``enabled``) or stop them; ``reason`` is cleaned (``clean_reason``)."""
    reason = clean_reason(reason)
    # The lock is the sessions' database's: held until the switch's row,
    # wherever it is written, has committed (the inner block; a transaction
    # of its own on another database, part of the outer one on the same).
    with (
        transaction.atomic(using=sessions_database()),
        transaction.atomic(using=router.db_for_write(ServiceSwitch), savepoint=False),
    ):
        hold_switch(exclusive=True)
        switch, _created = ServiceSwitch.objects.update_or_create(
            pk=ServiceSwitch.SINGLETON_PK,
            defaults={
                "sessions_enabled": enabled,
                "reason": reason,
                "changed_at": timezone.now(),
                "changed_by": by if getattr(by, "pk", None) is not None else None,
            },
        )
    return switch


# --------------------------------------------------------------------------- site cap


def site_cap() -> int | None:
    return avaturn_settings.MAX_LIVE_SESSIONS


def lock_for_site_cap() -> None:
    """Serialise starts site-wide for the rest of this transaction (PostgreSQL only).

    SQLite already serialises writers (the start's INSERT comes first); other
    databases get no extra lock and the cap may be overshot by concurrent starts.
    """
    _advisory_lock(_SITE_CAP_LOCK_KEY)


@dataclass(frozen=True)
class AdvisoryLock:
    """A call of PostgreSQL's that holds an advisory lock until the transaction ends."""

    function: str
    key: int  # signed, as PostgreSQL's bigint takes it

    @classmethod
    def of(cls, key: int, *, shared: bool = False) -> AdvisoryLock:
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        # The keys are unsigned 64-bit numbers; PostgreSQL takes a signed bigint.
        return cls(function, key - 2**63)


def reservation_locks(*, site_cap: bool) -> list[AdvisoryLock]:
    """The advisory locks a start's reservation takes after its INSERT, in their order.

    ``lock_for_site_cap()`` (with ``site_cap``) and ``hold_switch()``, for
    a reservation that takes them in a statement of its own (PostgreSQL).
    """
    locks = [AdvisoryLock.of(_SITE_CAP_LOCK_KEY)] if site_cap else []
    return [*locks, AdvisoryLock.of(_SWITCH_LOCK_KEY, shared=True)]


def _advisory_lock(key: int, *, shared: bool = False) -> None:
    """Hold PostgreSQL's advisory lock ``key`` until the sessions' transaction ends (else none)."""
    connection = connections[sessions_database()]
    if connection.vendor == "postgresql":
        lock = AdvisoryLock.of(key, shared=shared)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {lock.function}(%s)", [lock.key])


def ensure_site_capacity(*, cap: int, new_row: Session, leaving: int) -> None:
    """Refuse if the site is full, counting the new row but not the ``leaving`` ones.

    The cap is on what may be billed, so it counts every active row, ``ending``
    ones too: a terminate in flight, or one that failed and waits for the
    expiry command's retry, is a session Avaturn may still be running. The
    ``leaving`` rows (those the start replaces) are not counted: the start
    creates nothing until they have ended (``sessions.starting._wait_for_ends``).
    (The per-user cap counts ``starting`` and ``live`` only: a row already
    ending is not one its user can replace; the start waits for it instead.)
    """
    holding = Session.objects.primary().active().exclude(pk=new_row.pk).count()
    if holding - leaving + 1 > cap:
        raise SiteLimitReached()


# --------------------------------------------------------------------------- quotas


@dataclass(frozen=True)
class Usage:
    sessions: int
    seconds: float
    window_start: datetime
    resets_at: datetime


def quota_for(user: Any) -> Quota:
    hook = avaturn_settings.QUOTA_HOOK
    if hook is None:
        return avaturn_settings.QUOTAS
    try:
        raw: Any = hook(user)
    except Exception:
        raise site_code_failed("QUOTA_HOOK") from None
    return parse_quota(raw)


def _window(now: datetime) -> tuple[datetime, datetime]:
    """The current quota window and when it resets."""
    if avaturn_settings.QUOTA_WINDOW == "rolling":
        return now - timedelta(days=1), now + timedelta(days=1)
    # The calendar day in the active time zone: a site that activates each
    # user's zone (timezone.activate in a middleware) gets their midnight.
    zone = timezone.get_current_timezone()
    today = timezone.localtime(now, zone).date()
    return usage.day_start(today, zone), usage.day_start(today + timedelta(days=1), zone)


def usage_for(
    user: Any,
    *,
    now: datetime | None = None,
    exclude_pk: int | None = None,
    enforcing: bool = False,
) -> Usage:
    """``user``'s sessions and seconds talked in the current window, as ``usage`` counts them.

    One query. A ``"day"`` window is today's entry of ``usage.daily_usage``;
    a rolling one the last 24 hours, and it resets when its oldest session
    leaves it. ``enforcing``: read where the rows are written (a quota's
    check); otherwise where the site's router reads them, as a report does.
    """
    now = now or timezone.now()
    window_start, resets_at = _window(now)
    rolling = avaturn_settings.QUOTA_WINDOW == "rolling"
    rows = Session.objects.primary() if enforcing else Session.objects.all()
    mine = rows.for_user(user)
    if exclude_pk is not None:
        mine = mine.exclude(pk=exclude_pk)
    # Starts still in flight count too, or concurrent starts could all slip under the limit.
    used = usage.window_usage(
        mine, since=window_start, until=None if rolling else resets_at, now=now
    )
    if rolling:
        resets_at = (used.first_start or now) + timedelta(days=1)
    return Usage(
        sessions=used.sessions,
        seconds=used.seconds,
        window_start=window_start,
        resets_at=resets_at,
    )


def ensure_quota(
    user: Any,
    *,
    quota: Quota,
    max_duration: int | None,
    new_row: Session,
    staying: Sequence[tuple[datetime | None, int | None]] = (),
) -> int | None:
    """Refuse a start over quota; return the ``max_duration`` the quota still allows.

    A minutes quota also caps the new session's ``max_duration``, so Avaturn
    itself ends the call when the day's minutes run out. ``staying`` are the
    ``(started_at, max_duration)`` of the user's other sessions that keep
    running (not the ones this start replaces): what they may still use is
    spoken for, or parallel sessions would each get the whole remainder. A
    start refused only for that is ``SessionLimitReached`` (ending one of
    them frees it), not ``QuotaExceeded``. ``quota`` is ``quota_for(user)``,
    asked before the reservation's transaction: the site's hook may be slow,
    and nothing of it needs the locks.
    """
    if quota.is_unlimited:
        return max_duration
    usage = usage_for(user, exclude_pk=new_row.pk, enforcing=True)
    rolling = avaturn_settings.QUOTA_WINDOW == "rolling"
    if quota.sessions_per_day is not None and usage.sessions >= quota.sessions_per_day:
        raise QuotaExceeded(
            limit="sessions_per_day",
            allowed=quota.sessions_per_day,
            resets_at=usage.resets_at,
            rolling=rolling,
        )
    if quota.minutes_per_day is not None:
        unused = quota.minutes_per_day * 60 - usage.seconds
        remaining = unused - _still_to_run(staying)
        # Avaturn will not run a session shorter than 60 s.
        if unused < 60:
            raise QuotaExceeded(
                limit="minutes_per_day",
                allowed=quota.minutes_per_day,
                resets_at=usage.resets_at,
                rolling=rolling,
            )
        if remaining < 60:
            raise SessionLimitReached(MINUTES_HELD)
        allowed = int(remaining)
        return allowed if max_duration is None else min(max_duration, allowed)
    return max_duration


# What a start refused because the user's running sessions hold the rest of their minutes says.
MINUTES_HELD = _(
    "Your avatar sessions still running hold the rest of your minutes. "
    "Try again when one of them ends."
)


def _still_to_run(staying: Sequence[tuple[datetime | None, int | None]]) -> float:
    """Seconds sessions may still run before their ``max_duration``.

    A session without one (started before a minutes quota was set) counts
    only what it has used so far. Rows left ``ending`` are not counted: they
    are being terminated, or are a failed start's orphan that no visitor uses.
    """
    now = timezone.now()
    seconds = 0.0
    for started_at, max_duration in staying:
        if max_duration is None:
            continue
        used = (now - started_at).total_seconds() if started_at is not None else 0.0
        seconds += max(0.0, max_duration - used)
    return seconds
