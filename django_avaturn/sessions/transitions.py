"""Every change of a session row's status, each a conditional ``UPDATE``.

``UPDATE ... WHERE status = ...`` lets two callers race for the same row
(to end it, replace it, activate it) without a lock held across an upstream
call: the loser sees zero rows updated and stands back. Nothing here talks
to an upstream; ``starting`` and ``ending`` decide when to call these,
around their calls to Avaturn.

The lifecycle: ``STARTING`` → ``LIVE`` (``activate``) → ``ENDING`` (a claim:
``claim_for_end`` or ``claim_own_for_end``, ``claim_replaced``, or the bulk
``claim_rows``)
→ ``ENDED``/``EXPIRED``/``FAILED`` (``finish_claimed``). When the terminate
fails, the row goes back to ``LIVE`` for its asker to retry
(``release_claimed``) only if that asker retries and nobody has asked for the
end since; otherwise it stays ``ENDING``, ``awaiting_retry``, and the expiry
command's next run terminates it.

Each claim writes ``updated_at`` (the claim stamp); ``take_over`` writes a
fresh one on a row with a session id whose end is in flight, which is how a
later asker (staff, the kill switch, the visitor) keeps that end from being
undone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.models import Case, DateTimeField, F, Q, Value, When
from django.utils import timezone

from django_avaturn.engine import layer
from django_avaturn.exceptions import (
    NotConfigured,
    SessionNotLive,
    SessionReplaced,
    SessionStillEnding,
    UpstreamError,
)
from django_avaturn.logs import get_logger
from django_avaturn.models import EndReason, Engine, Session, SessionStatus, sessions_database
from django_avaturn.sessions import statements
from django_avaturn.signals import send_logged, session_ended
from django_avaturn.spend import limits
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)

# Rows that hold (or are about to hold) a slot under the per-user cap.
CAPPED_STATUSES = (SessionStatus.STARTING, SessionStatus.LIVE)

# Ends whose asker retries a failed terminate itself, so the row goes back to
# live for it: the widget retries its Stop, a replacing start fails (and its
# visitor may start again), the next expiry run judges the row again. An end
# asked for by staff, the kill switch or a user who went is never undone: a
# failed terminate leaves its row ending for the expiry command.
RETRIED_BY_ASKER = (EndReason.CLIENT, EndReason.REPLACED, EndReason.EXPIRED)


def clip_detail(detail: str) -> str:
    """``detail`` cut to what ``Session.end_detail`` holds (the model field's ``max_length``)."""
    return detail[: Session._meta.get_field("end_detail").max_length]


# --------------------------------------------------------------------------- starting


def activate(row: Session, session_id: str, expires_at: datetime | None) -> bool:
    """``STARTING`` → ``LIVE`` with Avaturn's id; False if someone claimed the row meanwhile."""
    now = timezone.now()
    updated = statements.update_row(
        row.pk,
        (SessionStatus.STARTING,),
        status=SessionStatus.LIVE,
        session_id=session_id,
        started_at=now,
        expires_at=expires_at,
        updated_at=now,
    )
    if updated != 1:
        return False
    # What the UPDATE wrote, without reading the row back.
    row.status, row.session_id, row.started_at = SessionStatus.LIVE, session_id, now
    row.expires_at, row.updated_at = expires_at, now
    return True


def claim_replaced(pks: list[int]) -> list[Session]:
    """Move the rows a start replaces to ``ENDING``; return those it claimed, as claimed.

    Conditional like every state change, so a row someone else ended
    meanwhile keeps their reason. Read after the claim: on PostgreSQL a
    starting row can go live between the read of the holders and this
    UPDATE (its activation takes no lock the reservation holds), and it must
    come back with its session id, or nothing would terminate it.
    """
    Session.objects.filter(pk__in=pks, status__in=CAPPED_STATUSES).update(
        status=SessionStatus.ENDING, end_reason=EndReason.REPLACED, updated_at=timezone.now()
    )
    claimed = Session.objects.primary().filter(
        pk__in=pks, status=SessionStatus.ENDING, end_reason=EndReason.REPLACED
    )
    return list(claimed.order_by("created_at", "pk"))


def resume_start(row: Session) -> bool:
    """Stamp a start's row as alive (``updated_at``), if it is still starting.

    The expiry command takes a start whose row has not been written for
    ``upstream.clients.longest_start()`` for one a dead process left behind.
    That covers a start's own upstream calls and one terminate's time (the
    sessions it replaces end together), not its wait for the user's ending
    rows: a start stamps its row during and after that, and after replacing
    several (``sessions.starting._resume``). False if the row
    was claimed or failed meanwhile (the caller creates nothing).
    """
    now = timezone.now()
    resumed = Session.objects.filter(pk=row.pk, status=SessionStatus.STARTING).update(
        updated_at=now
    )
    if resumed:
        row.updated_at = now
    return bool(resumed)


def finish_without_upstream(row: Session, session_id: str) -> None:
    """A start whose row was claimed meanwhile terminated what it created: record the id, end."""
    now = timezone.now()
    finished = Session.objects.filter(pk=row.pk, status=SessionStatus.ENDING).update(
        status=SessionStatus.ENDED,
        session_id=session_id,
        ended_at=now,
        updated_at=now,
        awaiting_retry=False,
    )
    if finished:
        tell_site_engine([row])


def end_unstarted(row: Session, *, reason: str) -> None:
    """End a start's own row before it asked Avaturn for anything: there is nothing to terminate.

    Claimed as any end is, so a racing ender that claimed it first keeps its
    reason; then finished at once either way, since this start will never
    record a session id (the claim's "its own request terminates what Avaturn
    creates" is this request, which creates nothing). Never sends
    ``session_ended``: the session never started. Nothing puts a claimed row
    back to starting (``release_claimed``), so the two cannot be split.
    """
    claim_for_end(row, reason=reason, detail="")
    finish_claimed([row], notify=False, only_without_id=True)


def failure_detail(exc: BaseException) -> str:
    """What a failed start records in ``end_detail``: scrubbed, never a key."""
    return exc.describe() if isinstance(exc, UpstreamError) else excerpt(type(exc).__name__)


def mark_failed(row: Session, exc: BaseException, *, session_id: str | None = None) -> None:
    """A start failed with nothing left running upstream: its row ends ``FAILED``. Never raises.

    A row still starting takes the reason ``exc`` gives (``_failure_reason``);
    one claimed meanwhile (``ENDING``) keeps the reason its claimer gave.
    """
    detail = failure_detail(exc)
    if isinstance(exc, UpstreamError):
        logger.warning("Avaturn session start failed: %s", detail)
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": SessionStatus.FAILED,
        "end_detail": clip_detail(detail),
        "ended_at": now,
        "updated_at": now,
        "awaiting_retry": False,
    }
    if session_id is not None:
        fields["session_id"] = session_id
    try:
        reason = _failure_reason(exc)
        claimed = Session.objects.filter(pk=row.pk, status=SessionStatus.STARTING).update(
            end_reason=reason, **fields
        )
        if not claimed:
            claimed = Session.objects.filter(pk=row.pk, status=SessionStatus.ENDING).update(
                **fields
            )
        if claimed:
            row.end_reason = row.end_reason or reason
            tell_site_engine([row])
    except DatabaseError:
        # The expiry command ends stale STARTING rows; the upstream side is already clean.
        logger.exception("Could not record the failed start of session row %s", row.pk)


def _failure_reason(exc: BaseException) -> EndReason:
    """The end reason of a start, still ``STARTING``, that failed with ``exc``.

    ``upstream_error`` when an upstream refused, failed or timed out
    (``UpstreamError``); ``previous_still_ending`` when it was refused
    because a session of the user's did not end first (nothing was asked of
    the upstreams for it); ``site_error`` for a failure of the site's own
    on the way (its database, its code).
    """
    if isinstance(exc, UpstreamError):
        return EndReason.UPSTREAM_ERROR
    if isinstance(exc, SessionStillEnding):
        return EndReason.PREVIOUS_STILL_ENDING
    return EndReason.SITE_ERROR


def unknown_outcome() -> Q:
    """Rows whose start's create has an unknown outcome (see ``hold_unknown_outcome``)."""
    return Q(
        status=SessionStatus.ENDING,
        end_reason=EndReason.UPSTREAM_ERROR,
        session_id__isnull=True,
        awaiting_retry=False,
    )


def is_unknown_outcome(row: Session) -> bool:
    """Whether ``row`` (status, end_reason, session_id, awaiting_retry loaded) is one of those."""
    return (
        row.status == SessionStatus.ENDING
        and row.end_reason == EndReason.UPSTREAM_ERROR
        and row.session_id is None
        and not row.awaiting_retry
    )


def claimed_start_calls_until(row: Session, in_flight: float) -> datetime:
    """From when the start of ``row``, claimed while it started, can call upstream no more.

    ``row`` is ``ENDING`` with no session id and not an unknown outcome: it
    was claimed while its start was ending what it replaced, waiting, or
    talking to the upstreams. That start, if alive, makes its last upstream
    call (the terminate of what it created, having found its row claimed)
    within ``in_flight`` seconds (``upstream.clients.longest_in_flight()``)
    of its reservation (``created_at``). Until then the row holds its slot;
    ``claimed_start_calls_over`` is the same rule as a filter.
    """
    return row.created_at + timedelta(seconds=in_flight)


def claimed_start_calls_over(now: datetime, in_flight: float) -> Q:
    """Rows without a session id past ``claimed_start_calls_until`` at ``now``."""
    return Q(session_id__isnull=True, created_at__lte=now - timedelta(seconds=in_flight))


def hold_unknown_outcome(row: Session, exc: BaseException) -> None:
    """A start's create may have started a session it cannot name: the row keeps its slot.

    ``ENDING``, reason ``upstream_error``, no session id, not awaiting a
    retry (nothing can be terminated): both caps count it, a later start of
    the user's waits for it or is refused, and the expiry command finishes it
    ``FAILED`` once Avaturn has ended any such session by itself
    (``upstream.clients.unknown_outcome_hold`` after ``updated_at``). Quotas
    do not count it (``usage.counted``). A row claimed meanwhile (replaced,
    staff, the kill switch) takes this reason too: what holds it is the
    unknown outcome, not the claim. Never raises.
    """
    detail = failure_detail(exc)
    logger.warning("Avaturn session start had an unknown outcome: %s", detail)
    try:
        held = Session.objects.filter(
            pk=row.pk,
            status__in=(SessionStatus.STARTING, SessionStatus.ENDING),
            session_id__isnull=True,
        ).update(
            status=SessionStatus.ENDING,
            end_reason=EndReason.UPSTREAM_ERROR,
            end_detail=clip_detail(detail),
            updated_at=timezone.now(),
            awaiting_retry=False,
        )
    except DatabaseError:
        # The expiry command fails the stale starting row; the slot is then freed early.
        logger.exception("Could not record the unknown outcome of session row %s", row.pk)
        return
    if held:
        # A site engine socket Avaturn connected while the create ran closes: closing
        # it ends that Avaturn session, which nothing could terminate by its id.
        row.end_reason = EndReason.UPSTREAM_ERROR
        tell_site_engine([row])


def leave_for_retry(row: Session, session_id: str, exc: BaseException | None = None) -> None:
    """Record an orphan's id on a row left ``ending``, for the expiry command to terminate.

    The row is ``awaiting_retry``: the command's next run terminates it
    upstream and only then gives it a final status, so a session Avaturn
    created is never recorded as ended while it may still run. A row someone
    else claimed keeps their end reason; a failed start's takes the reason
    of ``exc`` (``_failure_reason``; ``upstream_error`` without one), and its
    final status is ``failed``. Never raises.
    """
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": SessionStatus.ENDING,
        "session_id": session_id,
        "updated_at": now,
        "awaiting_retry": True,
    }
    if exc is not None:
        fields["end_detail"] = clip_detail(failure_detail(exc))
    # A row without an id that is no longer live: still starting, claimed by
    # an ender, or already finished by the expiry command's sweep of stuck
    # starts (a start slower than its upstream timeouts allow, see
    # upstream.clients.longest_start). Each is ours to reopen.
    ours = Session.objects.filter(pk=row.pk, session_id__isnull=True).exclude(
        status=SessionStatus.LIVE
    )
    try:
        # A start's own row (still starting, or marked failed by the sweep of
        # stuck starts) ends failed once terminated; a claimed one keeps its reason.
        updated = ours.filter(status__in=(SessionStatus.STARTING, SessionStatus.FAILED)).update(
            end_reason=EndReason.UPSTREAM_ERROR if exc is None else _failure_reason(exc),
            ended_at=None,
            **fields,
        ) or ours.update(ended_at=None, **fields)
    except DatabaseError:
        updated = 0
        logger.exception("Could not record orphaned Avaturn session %s on its row", session_id)
    if updated:
        logger.error(
            "Avaturn session %s is left ending on session row %s; the expiry command's "
            "next run terminates it.",
            session_id,
            row.pk,
        )
    else:
        # The row is gone (its user deleted meanwhile): nothing will retry.
        logger.error(
            "Avaturn session %s could not be terminated and has no row to retry it from; "
            "it ends by itself within its user_absent_timeout; end it by hand.",
            session_id,
        )


# --------------------------------------------------------------------------- ending


def claim_for_end(session: Session, *, reason: str, detail: str) -> bool:
    """Move ``session`` (starting or live) to ``ENDING`` for ``reason``; False if not (or gone).

    One claim for both statuses: claimed one after the other, a row its start
    activated between the two statements would match neither. The instance
    is updated to what was claimed; ``started_at`` (set only by ``activate``)
    then tells a live row from one still starting.
    """
    now = timezone.now()
    claimed = statements.update_row(
        session.pk,
        CAPPED_STATUSES,
        status=SessionStatus.ENDING,
        end_reason=reason,
        end_detail=clip_detail(detail),
        updated_at=now,
    )
    if not claimed:
        refresh_if_present(session)
        return False
    # The caller's copy may predate the activation: read what was claimed.
    # (A live row keeps its id, so a copy that saw it live is up to date.)
    up_to_date = session.status == SessionStatus.LIVE and session.session_id
    if not up_to_date and not refresh_if_present(session):
        return False
    session.status, session.end_reason = SessionStatus.ENDING, reason
    session.end_detail, session.updated_at = clip_detail(detail), now
    return True


def claim_own_for_end(session_id: str, user_pk: Any, *, reason: str, detail: str) -> Session | None:
    """``claim_for_end`` of the user's row named ``session_id``, found and claimed at once.

    The claimed row, whole and up to date; None when nothing was claimed:
    the user has no such row, or it is past starting and live, or the
    database cannot claim and answer in one statement (then the caller reads
    the row and claims it with ``claim_for_end``).
    """
    if not statements.updates_return_rows():
        return None
    return statements.update_own_row(
        session_id,
        user_pk,
        CAPPED_STATUSES,
        status=SessionStatus.ENDING,
        end_reason=reason,
        end_detail=clip_detail(detail),
        updated_at=timezone.now(),
    )


def refresh_if_present(session: Session, fields: Sequence[str] | None = None) -> bool:
    """Re-read ``session`` (or only ``fields`` of it); False if its row is gone.

    Read from the database the status changes are written to: a re-read
    follows a lost race, whose winner a lagging replica may not show yet. A
    row goes with its user: a deletion racing an end has ended (or will end)
    upstream whatever the row recorded (``users``).
    """
    try:
        session.refresh_from_db(using=sessions_database(), fields=fields)
    except Session.DoesNotExist:
        return False
    return True


def finish_claimed(
    sessions: Sequence[Session], *, notify: bool = True, only_without_id: bool = False
) -> None:
    """Give rows this caller claimed (moved to ``ENDING``) and terminated their final status.

    One ``UPDATE`` per final status however many rows, so bulk callers (the
    admin, the expiry command) stay at a few queries per batch. A row ended
    for ``expired`` becomes ``EXPIRED``, for ``upstream_error`` (a failed
    start's orphan, terminated later) ``FAILED``, any other ``ENDED``. Then
    ``session_ended`` is sent once per row (unless ``notify`` is false).
    ``only_without_id`` finishes only rows still without a session id: a slow
    start may record one meanwhile (``leave_for_retry``), and that row must
    then wait for its terminate.
    """
    now = timezone.now()
    by_status: dict[SessionStatus, list[Session]] = {}
    for session in sessions:
        by_status.setdefault(_final_status(session.end_reason), []).append(session)
    for final_status, group in by_status.items():
        fields = {"status": final_status, "ended_at": now, "updated_at": now}
        if len(group) == 1 and not only_without_id:
            # A single end's row: the statement is cheaper written once (statements).
            statements.update_row(
                group[0].pk, (SessionStatus.ENDING,), **fields, awaiting_retry=False
            )
        else:
            claimed = Session.objects.filter(
                pk__in=[s.pk for s in group], status=SessionStatus.ENDING
            )
            if only_without_id:
                claimed = claimed.filter(session_id__isnull=True)
            claimed.update(**fields, awaiting_retry=False)
        for session in group:
            session.status, session.ended_at, session.updated_at = final_status, now, now
            session.awaiting_retry = False
    tell_site_engine(sessions)
    if notify:
        for session in sessions:
            # Only a session that went live (session_started was sent) ended;
            # a start's orphan terminated on a retry never started.
            if session.started_at is not None:
                send_logged(session_ended, session=session, reason=session.end_reason)


def tell_site_engine(sessions: Sequence[Session]) -> None:
    """These rows are ended (or ending): a site engine socket of theirs closes, once committed.

    Through the channel layer (``engine.layer``), so the consumer holding the
    sockets closes both at once, in whichever process or host it runs.
    Never raises. An end the consumer itself recorded tells it too; it is
    closing already and ignores that.
    """
    ended = [(s.pk, s.end_reason) for s in sessions if s.engine == Engine.SITE]
    if ended:
        transaction.on_commit(lambda: layer.tell_ended(ended), using=sessions_database())


def _final_status(end_reason: str) -> SessionStatus:
    if end_reason == EndReason.EXPIRED:
        return SessionStatus.EXPIRED
    # A failed start whose orphan was terminated later (see leave_for_retry), or a
    # conversation the site engine ended on a failure.
    if end_reason in (EndReason.UPSTREAM_ERROR, EndReason.SITE_ERROR):
        return SessionStatus.FAILED
    return SessionStatus.ENDED


def release_claimed(sessions: Sequence[Session], *, sent: bool = True) -> None:
    """Upstream termination failed: put claimed rows back to live for their asker to retry.

    Only a row with a session id: one claimed while it was still starting
    stays ending, and its own start terminates what Avaturn creates (put back
    to starting, it could go live after its own page's abandon had looked
    for it). Only a row still as its caller claimed
    it (the same claim stamp: nobody took it over since, see ``take_over``),
    ended for a reason whose asker retries (``RETRIED_BY_ASKER``; any reason
    when nothing was ``sent``: a setting is missing, or the start that
    claimed it was abandoned, so nobody terminated it), and only while
    the kill switch is on. Every other row stays ``ENDING``,
    ``awaiting_retry``: the expiry command's next run terminates it; one the
    kill switch kept from going live takes the switch as its reason.
    Ordered against a flip of the switch (``limits.hold_switch``): either the
    flip's sweep finds the row live again and ends it, or this sees the
    switch off.
    """
    if not sessions:
        return
    now = timezone.now()
    pks = [session.pk for session in sessions]
    by_stamp: dict[datetime, list[Any]] = {}
    for session in sessions:
        by_stamp.setdefault(session.updated_at, []).append(session.pk)
    with transaction.atomic(using=sessions_database()):
        limits.hold_switch()
        try:
            switched_off = not limits.sessions_enabled()
            enabled = not switched_off
        except NotConfigured:
            # Unsure whether sessions may run: nothing goes back to live.
            switched_off, enabled = False, False
        if enabled:
            for stamp, group in by_stamp.items():
                releasable = Session.objects.filter(
                    pk__in=group,
                    status=SessionStatus.ENDING,
                    updated_at=stamp,
                    session_id__isnull=False,
                )
                if sent:
                    releasable = releasable.filter(end_reason__in=RETRIED_BY_ASKER)
                releasable.update(
                    status=SessionStatus.LIVE, end_reason="", end_detail="", updated_at=now
                )
        # One still starting is its own start's to finish, not the expiry command's.
        kept = Session.objects.filter(
            pk__in=pks, status=SessionStatus.ENDING, session_id__isnull=False
        )
        if switched_off:
            kept.filter(end_reason__in=RETRIED_BY_ASKER).update(end_reason=EndReason.SHUTDOWN)
        kept.update(awaiting_retry=True, updated_at=now)
        fields = ("status", "end_reason", "end_detail", "awaiting_retry")
        states = {
            values[0]: values[1:]
            for values in Session.objects.primary().filter(pk__in=pks).values_list("pk", *fields)
        }
    # The callers' copies, as written (a row gone with its user is left as it was).
    for session in sessions:
        for name, value in zip(fields, states.get(session.pk, ()), strict=False):
            setattr(session, name, value)
        session.updated_at = now
    # Kept ending: whatever the terminate left running must not go on meanwhile.
    tell_site_engine([s for s in sessions if s.status == SessionStatus.ENDING])


def await_retry(sessions: Sequence[Session]) -> None:
    """A terminate failed for rows that must not read as live again: the expiry command retries."""
    if not sessions:
        return
    now = timezone.now()
    Session.objects.filter(
        pk__in=[session.pk for session in sessions], status=SessionStatus.ENDING
    ).update(awaiting_retry=True, updated_at=now)
    for session in sessions:
        if session.status == SessionStatus.ENDING:
            session.awaiting_retry, session.updated_at = True, now
    # The conversation must not run on until the retry: closing its engine socket
    # ends the Avaturn session too.
    tell_site_engine([s for s in sessions if s.status == SessionStatus.ENDING])


def take_over(sessions: Sequence[Session]) -> int:
    """Someone else's end of these ``ENDING`` rows is in flight: make sure it is not undone.

    A fresh claim stamp on a row with a session id: if that end's terminate
    fails, ``release_claimed`` no longer finds the row as it claimed it, so
    the row stays ending for the expiry command instead of going back to
    live. A succeeding end finishes it as usual. A row without one (a start
    claimed, or a create with an unknown outcome) never goes back to live,
    and keeps its ``updated_at``: what an unknown outcome's hold
    (``starting._in_flight_until``) and the expiry command's sweep of stuck
    ends count from. Rows already ``awaiting_retry`` are the expiry
    command's. Returns how many rows it took over.
    """
    if not sessions:
        return 0
    stamp = Case(
        When(session_id__isnull=True, then=F("updated_at")),
        default=Value(timezone.now(), output_field=DateTimeField()),
    )
    return Session.objects.filter(
        pk__in=[session.pk for session in sessions],
        status=SessionStatus.ENDING,
        awaiting_retry=False,
    ).update(updated_at=stamp)


# --------------------------------------------------------------------------- bulk claims


def claim_rows(
    rows: Sequence[Session],
    *,
    from_status: str,
    detail_for: Callable[[Session], str],
    only: Q | None = None,
    **fields: Any,
) -> list[Session]:
    """Move the rows still in ``from_status`` to ``fields``; return exactly those this call moved.

    One ``UPDATE`` per distinct detail, then one ``SELECT`` for the claim
    stamp, which makes the answer exact even on a database without row locks.
    ``only`` narrows the ``UPDATE`` further (the caller passes rows that match it).
    """
    stamp = timezone.now()
    groups: dict[str, list[Any]] = {}
    for row in rows:
        if row.status == from_status:
            groups.setdefault(detail_for(row), []).append(row.pk)
    if not groups:
        return []
    for detail, pks in groups.items():
        values = dict(fields, updated_at=stamp)
        if detail:
            values["end_detail"] = clip_detail(detail)
        targets = Session.objects.filter(pk__in=pks, status=from_status)
        if only is not None:
            targets = targets.filter(only)
        targets.update(**values)
    candidates = [pk for pks in groups.values() for pk in pks]
    claims = Session.objects.primary().filter(pk__in=candidates, updated_at=stamp)
    won = set(claims.values_list("pk", flat=True))
    claimed = []
    for row in rows:
        if row.pk in won:
            for name, value in fields.items():
                setattr(row, name, value)
            if detail := detail_for(row):
                row.end_detail = clip_detail(detail)
            row.updated_at = stamp
            claimed.append(row)
    return claimed


def fail_stuck_starts(
    rows: Sequence[Session], *, detail: str, untouched_since: datetime
) -> list[Session]:
    """``STARTING`` → ``FAILED`` (reason ``expired``) for starts a dead process left behind.

    They never recorded a session id, so there is nothing to terminate: the
    row ends at once, failed (it never went live), and the reason says the
    expiry command ended it. Only rows not written since ``untouched_since``
    move: a start that stamped its row after it was read (``resume_start``)
    is alive. Returns the rows this call moved.
    """
    failed = claim_rows(
        rows,
        from_status=SessionStatus.STARTING,
        only=Q(updated_at__lt=untouched_since),
        detail_for=lambda row: detail,
        status=SessionStatus.FAILED,
        end_reason=EndReason.EXPIRED,
        ended_at=timezone.now(),
    )
    # A site engine socket may have connected to a start its process never finished.
    tell_site_engine(failed)
    return failed


# --------------------------------------------------------------------------- heartbeat


def record_heartbeat(session_id: str, user_pk: Any) -> bool:
    """The visitor's browser is still there: record it on the user's row named ``session_id``.

    False if the user has no such row; ``SessionReplaced`` or
    ``SessionNotLive`` if it is no longer live. The API's heartbeat, every
    ``HEARTBEAT_INTERVAL`` of every live session: one statement finds the
    row and records it; only a refusal reads more, from the database written
    to (a row started a moment ago may not be on a replica yet).
    """
    now = timezone.now()
    live = (SessionStatus.LIVE,)
    if statements.update_own(session_id, user_pk, live, last_seen_at=now, updated_at=now):
        return True
    mine = Session.objects.primary().filter(session_id=session_id, user_id=user_pk)
    end_reasons = list(mine.values_list("end_reason", flat=True))
    if not end_reasons:
        return False
    # Said apart: the widget then tells its visitor why the call ended.
    if end_reasons == [EndReason.REPLACED]:
        raise SessionReplaced()
    raise SessionNotLive()


# --------------------------------------------------------------------------- the site engine


def store_engine_socket(row: Session, secret_hash: str, plan: dict[str, Any]) -> None:
    """Record, on a start's own row (still starting), what its site engine socket will need:
    the hash of the socket's secret and the plan it opens OpenAI Realtime with."""
    Session.objects.filter(pk=row.pk, status=SessionStatus.STARTING).update(
        engine_secret_hash=secret_hash, engine_plan=plan
    )
    row.engine_secret_hash, row.engine_plan = secret_hash, plan


def mark_engine_connected(pk: int) -> bool:
    """The engine socket of row ``pk`` is being accepted: True once, False ever after.

    The token's single use: only the first socket finds ``engine_connected_at``
    empty. Only a site engine row still starting (Avaturn may connect before
    its create has answered) or live, never one ending or ended.
    """
    now = timezone.now()
    return (
        Session.objects.filter(
            pk=pk,
            engine=Engine.SITE,
            status__in=CAPPED_STATUSES,
            engine_connected_at__isnull=True,
        ).update(engine_connected_at=now)
        == 1
    )
