"""Starting and ending sessions: the one place that coordinates upstreams and the database.

Views, the admin, the management command and the widget all come through
here. Two rules shape the code:

* No database transaction is held open across an upstream call. A start
  reserves its slot in a short transaction (``STARTING`` row), talks to
  OpenAI and Avaturn, then activates the row with a conditional ``UPDATE``.
* Every state change is a conditional ``UPDATE ... WHERE status = ...``, so
  two callers racing to end (or replace) the same session cannot both win:
  the loser sees zero rows updated and stands back. The winner alone calls
  Avaturn's DELETE, and the row ends once, with the winner's reason.

Whatever fails after Avaturn created a session, that session is terminated
upstream before the error propagates, so nothing is left running unrecorded.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet
from django.dispatch import Signal
from django.http import HttpRequest
from django.utils import timezone

from django_avaturn import limits
from django_avaturn.avaturn_client import IncompleteSession
from django_avaturn.clients import get_avaturn_client, get_openai_secrets
from django_avaturn.exceptions import (
    AvaturnError,
    SessionLimitReached,
    SessionNotLive,
    SessionReplaced,
    SessionsDisabled,
    StorageUnavailable,
    UpstreamError,
    UserNotActive,
)
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.redaction import excerpt
from django_avaturn.session_config import SessionPlan, build_plan
from django_avaturn.signals import session_ended, session_started
from django_avaturn.validation import (
    required_choice_setting,
    required_int_setting,
    sdk_api_host,
)

logger = logging.getLogger(__name__)

# Rows that hold (or are about to hold) a slot under the per-user cap.
_CAPPED_STATUSES = (SessionStatus.STARTING, SessionStatus.LIVE)


@dataclass(frozen=True)
class StartedSession:
    """What the browser needs to join a session. ``token`` is for the browser only."""

    session: Session
    token: str
    api_host: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"StartedSession(session_id={self.session.session_id!r}, token='[redacted]')"


class EndOutcome(enum.Enum):
    ENDED = "ended"  # we terminated it upstream just now
    ALREADY_GONE = "already_gone"  # Avaturn answered 404: it had ended by itself
    # Claimed while starting: its own request terminates what Avaturn creates
    # (and leaves it for the expiry command if that fails). Nothing ended yet.
    STOPPED_WHILE_STARTING = "stopped_while_starting"
    ALREADY_ENDED = "already_ended"  # the row had already ended (or someone else is ending it)


# --------------------------------------------------------------------------- starting


def start_session(
    user: AbstractBaseUser,
    *,
    request: HttpRequest | None = None,
    avatar_id: str | None = None,
    config_name: str = "",
) -> StartedSession:
    """Start an Avaturn session for ``user`` and record it.

    Raises ``NotConfigured`` (nothing spent), ``UserNotActive`` (the user is
    inactive or gone: deactivated since the request authenticated them, or
    passed in so), ``SessionLimitReached`` (refuse policy, or the running
    sessions hold what is left of a minutes quota), ``QuotaExceeded``,
    ``UpstreamError``/``UpstreamTimeout`` (the row is marked failed
    and no upstream session survives), ``SessionReplaced`` (a newer start by
    the same user took the slot meanwhile) or ``StorageUnavailable``.
    """
    if not getattr(user, "is_authenticated", False) or user.pk is None:
        raise ValueError("Sessions belong to a signed-in user.")
    plan = build_plan(request=request, avatar_id=avatar_id, config_name=config_name)
    policy = required_choice_setting("ON_SESSION_LIMIT")
    cap = required_int_setting("MAX_LIVE_SESSIONS_PER_USER")
    api_host = sdk_api_host()
    # (The kill switch is read once, under the reservation's locks.)
    # Fail on missing keys before a slot is reserved or anything is spent.
    secrets = get_openai_secrets()
    avaturn = get_avaturn_client()

    row, replaced = _reserve_slot(user, plan, cap=cap, refuse=policy == "refuse")
    try:
        _end_replaced(replaced)
    except AvaturnError as exc:
        _mark_failed(row, exc)
        raise

    try:
        secret = secrets.mint(session=plan.realtime_session, ttl_seconds=plan.client_secret_ttl)
    except AvaturnError as exc:
        _mark_failed(row, exc)
        raise

    try:
        created = avaturn.create_session(plan.avaturn_payload(secret.value))
    except IncompleteSession as exc:
        _fail_with_orphan(row, exc, exc.session_id)
        raise
    except AvaturnError as exc:
        _mark_failed(row, exc)
        raise

    expires_at = datetime.fromtimestamp(secret.expires_at, tz=dt_timezone.utc)
    try:
        activated = _activate(row, created.session_id, expires_at)
    except Exception as exc:
        # The database failed after Avaturn started billing: end it upstream first.
        _fail_with_orphan(row, exc, created.session_id)
        if isinstance(exc, DatabaseError):
            raise StorageUnavailable() from exc
        raise
    if not activated:
        # Replaced, terminated by staff or stopped by the kill switch while we
        # were talking to the upstreams: end what was just created.
        if _terminate_orphan(created.session_id):
            _finish_claimed_without_upstream(row, created.session_id)
        else:
            _leave_for_retry(row, created.session_id)
        try:
            row.refresh_from_db(fields=["end_reason"])
        except Session.DoesNotExist:
            # The user was deleted meanwhile, the row with them.
            raise SessionNotLive() from None
        if row.end_reason == EndReason.REPLACED:
            raise SessionReplaced()
        if row.end_reason == EndReason.SHUTDOWN:
            raise SessionsDisabled()
        raise SessionNotLive()

    _send_robust(session_started, session=row, request=request)
    logger.info("Started Avaturn session %s for user %s", row.session_id, row.user_id)
    return StartedSession(
        session=row,
        token=created.token,
        api_host=api_host,
        expires_at=expires_at,
    )


def _reserve_slot(
    user: AbstractBaseUser, plan: SessionPlan, *, cap: int, refuse: bool
) -> tuple[Session, list[Session]]:
    """Insert a STARTING row under every limit; return it and the rows it replaces.

    PostgreSQL serialises a user's concurrent starts on the user row's lock
    (and all starts on an advisory lock while a site-wide cap is set). SQLite
    has no row locks, but the INSERT comes first so the transaction takes
    SQLite's write lock before it reads anything: concurrent starts queue on
    the busy timeout instead of reading a stale count.
    """
    site_cap = limits.site_cap()
    user_row = get_user_model()._default_manager.filter(pk=user.pk)
    locks_rows = connection.features.has_select_for_update
    try:
        with transaction.atomic():
            if locks_rows:
                _ensure_still_active(user_row.select_for_update())
            if site_cap is not None:
                limits.lock_for_site_cap()
            row = Session.objects.create(
                user_id=user.pk,
                status=SessionStatus.STARTING,
                avatar_id=plan.avatar_id,
                model=plan.model,
                voice=plan.voice,
                config_name=plan.config_name,
                max_duration=plan.max_duration,
            )
            if not locks_rows:
                # Under the write lock the INSERT took (see above).
                _ensure_still_active(user_row)
            # Checked again under the locks (the switch may have flipped since),
            # and after the INSERT, for the write lock's sake (see above).
            limits.hold_switch()
            limits.ensure_enabled()
            # Not whole rows: those are read only when some are replaced.
            holders = [
                (pk, started_at, max_duration)
                for pk, started_at, max_duration in Session.objects.filter(
                    user_id=user.pk, status__in=_CAPPED_STATUSES
                )
                .order_by("created_at", "pk")
                .values_list("pk", "started_at", "max_duration")
                if pk != row.pk
            ]
            excess = len(holders) + 1 - cap
            leaving = [pk for pk, *_ in holders[:excess]] if excess > 0 and not refuse else []
            max_duration = limits.ensure_quota(
                user,
                max_duration=plan.max_duration,
                new_row=row,
                staying=[(started, limit) for pk, started, limit in holders if pk not in leaving],
            )
            if max_duration != plan.max_duration:
                plan.max_duration = max_duration
                plan.avaturn_options["max_duration"] = max_duration
                row.max_duration = max_duration
                row.save(update_fields=["max_duration"])
            if excess > 0 and refuse:
                raise SessionLimitReached()
            replaced = _claim_replaced(leaving) if leaving else []
            if site_cap is not None:
                limits.ensure_site_capacity(cap=site_cap, new_row=row, leaving=len(replaced))
            return row, replaced
    except DatabaseError as exc:
        raise StorageUnavailable() from exc


def _ensure_still_active(user_row: QuerySet[Any]) -> None:
    """Refuse a user deactivated or deleted since the request authenticated them.

    Deactivation ends the sessions a user has (``receivers``); one reserved
    after it would run on, for an inactive user, until it expired. Read
    under the reservation's lock, so the two cannot miss each other.
    """
    fields = ["pk"]
    if any(field.name == "is_active" for field in user_row.model._meta.concrete_fields):
        fields.append("is_active")  # a custom user model need not have it
    found = list(user_row.values_list(*fields))
    if not found or (len(fields) == 2 and not found[0][1]):
        raise UserNotActive()


def _claim_replaced(pks: list[int]) -> list[Session]:
    """Move the rows a start replaces to ``ENDING``; return those it claimed, as claimed.

    Conditional like every state change, so a row someone else ended
    meanwhile keeps their reason. Read after the claim: on PostgreSQL a
    starting row can go live between the read of the holders and this
    UPDATE (its activation takes no lock the reservation holds), and it must
    come back with its session id, or nothing would terminate it.
    """
    Session.objects.filter(pk__in=pks, status__in=_CAPPED_STATUSES).update(
        status=SessionStatus.ENDING, end_reason=EndReason.REPLACED, updated_at=timezone.now()
    )
    claimed = Session.objects.filter(
        pk__in=pks, status=SessionStatus.ENDING, end_reason=EndReason.REPLACED
    )
    return list(claimed.order_by("created_at", "pk"))


def _end_replaced(replaced: list[Session]) -> None:
    for old in replaced:
        if old.session_id is None:
            # Still starting: its own request will see it was replaced and clean up.
            continue
        _terminate_claimed(old, was_live=True)


def _activate(row: Session, session_id: str, expires_at: datetime) -> bool:
    now = timezone.now()
    updated = Session.objects.filter(pk=row.pk, status=SessionStatus.STARTING).update(
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


def _finish_claimed_without_upstream(row: Session, session_id: str) -> None:
    now = timezone.now()
    Session.objects.filter(pk=row.pk, status=SessionStatus.ENDING).update(
        status=SessionStatus.ENDED, session_id=session_id, ended_at=now, updated_at=now
    )


def _failure_detail(exc: BaseException) -> str:
    """What a failed start records in ``end_detail``: scrubbed, never a key."""
    return exc.describe() if isinstance(exc, UpstreamError) else excerpt(type(exc).__name__)


def _mark_failed(row: Session, exc: BaseException, *, session_id: str | None = None) -> None:
    detail = _failure_detail(exc)
    if isinstance(exc, UpstreamError):
        logger.warning("Avaturn session start failed: %s", detail)
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": SessionStatus.FAILED,
        "end_detail": detail[:500],
        "ended_at": now,
        "updated_at": now,
    }
    if session_id is not None:
        fields["session_id"] = session_id
    try:
        claimed = Session.objects.filter(pk=row.pk, status=SessionStatus.STARTING).update(
            end_reason=EndReason.UPSTREAM_ERROR, **fields
        )
        if not claimed:
            Session.objects.filter(pk=row.pk, status=SessionStatus.ENDING).update(**fields)
    except DatabaseError:
        # The expiry command ends stale STARTING rows; the upstream side is already clean.
        logger.exception("Could not record the failed start of session row %s", row.pk)


def _fail_with_orphan(row: Session, exc: BaseException, session_id: str) -> None:
    """A start failed after Avaturn created ``session_id``: end it, then record the failure.

    If Avaturn cannot end it either, the row is left for the expiry command to
    retry rather than recorded failed while the session may still run.
    """
    if _terminate_orphan(session_id):
        _mark_failed(row, exc, session_id=session_id)
    else:
        _leave_for_retry(row, session_id, exc)


def _terminate_orphan(session_id: str) -> bool:
    """End an upstream session that has (or will have) no live row. Never raises.

    False when Avaturn could not be reached: the caller must leave a row that
    the expiry command retries (``_leave_for_retry``).
    """
    try:
        get_avaturn_client().terminate_session(session_id)
    except AvaturnError as exc:
        logger.error(
            "Could not terminate orphaned Avaturn session %s; the expiry command retries it: %s",
            session_id,
            exc,
        )
        return False
    return True


def _leave_for_retry(row: Session, session_id: str, exc: BaseException | None = None) -> None:
    """Record an orphan's id on a row left ``ending``, for the expiry command to terminate.

    Its sweep of rows stuck ``ending`` (``EXPIRE_STUCK_AFTER``) terminates them
    upstream and only then gives them a final status, so a session Avaturn
    created is never recorded as ended while it may still run. A row someone
    else claimed keeps their end reason; a failed start's becomes
    ``upstream_error`` (and its final status ``failed``).
    """
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": SessionStatus.ENDING,
        "session_id": session_id,
        "updated_at": now,
    }
    if exc is not None:
        fields["end_detail"] = _failure_detail(exc)[:500]
    # A row without an id that is no longer live: still starting, claimed by
    # an ender, or already finished by the expiry command's sweep of stuck
    # starts (a start slower than EXPIRE_STUCK_AFTER). Each is ours to reopen.
    ours = Session.objects.filter(pk=row.pk, session_id__isnull=True).exclude(
        status=SessionStatus.LIVE
    )
    try:
        # A start's own row (still starting, or marked failed by the sweep of
        # stuck starts) ends failed once terminated; a claimed one keeps its reason.
        updated = ours.filter(status__in=(SessionStatus.STARTING, SessionStatus.FAILED)).update(
            end_reason=EndReason.UPSTREAM_ERROR, ended_at=None, **fields
        ) or ours.update(ended_at=None, **fields)
    except DatabaseError:
        updated = 0
        logger.exception("Could not record orphaned Avaturn session %s on its row", session_id)
    if not updated:
        # The row is gone (its user deleted meanwhile): nothing will retry.
        logger.error(
            "Avaturn session %s could not be terminated and has no row to retry it from; "
            "it ends by itself within its user_absent_timeout; end it by hand.",
            session_id,
        )


# --------------------------------------------------------------------------- ending


def end_session(session: Session, *, reason: str, detail: str = "") -> EndOutcome:
    """End ``session`` now: terminate it upstream once and record ``reason`` once.

    Idempotent: ending an ended session returns ``ALREADY_ENDED`` without
    calling Avaturn. A session still starting is claimed and returns
    ``STOPPED_WHILE_STARTING``: its own request terminates what Avaturn
    creates. If Avaturn cannot be reached the row goes back to live (so a
    later attempt, or the expiry command, can try again) and the
    ``UpstreamError`` propagates.
    """
    if reason not in EndReason.values:
        raise ValueError(f"Unknown end reason {reason!r}.")
    now = timezone.now()
    claim = {
        "status": SessionStatus.ENDING,
        "end_reason": reason,
        "end_detail": detail[:500],
        "updated_at": now,
    }
    # One claim for both: claimed one status after the other, a row its start
    # activated between the two statements would match neither.
    claimed = Session.objects.filter(pk=session.pk, status__in=_CAPPED_STATUSES).update(**claim)
    if not claimed:
        session.refresh_from_db()
        return EndOutcome.ALREADY_ENDED
    if not (session.status == SessionStatus.LIVE and session.session_id):
        # The caller's copy may predate the activation: read what was claimed.
        # (A live row keeps its id, so a copy that saw it live is up to date.)
        session.refresh_from_db()
        if session.started_at is None:  # only an activation sets it
            # Claimed while starting: its own request terminates what Avaturn creates.
            return EndOutcome.STOPPED_WHILE_STARTING
    session.status, session.end_reason = SessionStatus.ENDING, reason
    session.end_detail, session.updated_at = detail[:500], now
    return _terminate_claimed(session, was_live=True)


def _terminate_claimed(session: Session, *, was_live: bool) -> EndOutcome:
    """Terminate a row this caller moved to ENDING, then give it its final status."""
    assert session.session_id is not None
    try:
        terminated = get_avaturn_client().terminate_session(session.session_id)
    except AvaturnError:
        release_claimed([session])
        session.refresh_from_db()
        raise
    # finish_claimed sets the final fields on the instance too: no read back.
    finish_claimed([session], notify=was_live)
    logger.info(
        "Ended Avaturn session %s (%s)%s",
        session.session_id,
        session.end_reason,
        "" if terminated else ", already gone upstream",
    )
    return EndOutcome.ENDED if terminated else EndOutcome.ALREADY_GONE


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
    start may record one meanwhile (``_leave_for_retry``), and that row must
    then wait for its terminate.
    """
    now = timezone.now()
    by_status: dict[SessionStatus, list[Session]] = {}
    for session in sessions:
        by_status.setdefault(_final_status(session.end_reason), []).append(session)
    for final_status, group in by_status.items():
        claimed = Session.objects.filter(pk__in=[s.pk for s in group], status=SessionStatus.ENDING)
        if only_without_id:
            claimed = claimed.filter(session_id__isnull=True)
        claimed.update(status=final_status, ended_at=now, updated_at=now)
        for session in group:
            session.status, session.ended_at, session.updated_at = final_status, now, now
    if notify:
        for session in sessions:
            # Only a session that went live (session_started was sent) ended;
            # a start's orphan terminated on a retry never started.
            if session.started_at is not None:
                _send_robust(session_ended, session=session, reason=session.end_reason)


def _final_status(end_reason: str) -> SessionStatus:
    if end_reason == EndReason.EXPIRED:
        return SessionStatus.EXPIRED
    # A failed start whose orphan was terminated later (see _leave_for_retry).
    if end_reason == EndReason.UPSTREAM_ERROR:
        return SessionStatus.FAILED
    return SessionStatus.ENDED


def release_claimed(sessions: Sequence[Session]) -> None:
    """Upstream termination failed: put claimed rows back to live so a later attempt retries."""
    now = timezone.now()
    Session.objects.filter(pk__in=[s.pk for s in sessions], status=SessionStatus.ENDING).update(
        status=SessionStatus.LIVE, end_reason="", end_detail="", updated_at=now
    )
    for session in sessions:
        session.status, session.end_reason, session.end_detail = SessionStatus.LIVE, "", ""
        session.updated_at = now


# --------------------------------------------------------------------------- heartbeat


def record_heartbeat(session: Session) -> None:
    """Note that the visitor's browser is still there."""
    now = timezone.now()
    updated = Session.objects.filter(pk=session.pk, status=SessionStatus.LIVE).update(
        last_seen_at=now, updated_at=now
    )
    if not updated:
        # Said apart: the widget then tells its visitor why the call ended.
        ended_for = Session.objects.filter(pk=session.pk).values_list("end_reason", flat=True)
        if list(ended_for) == [EndReason.REPLACED]:
            raise SessionReplaced()
        raise SessionNotLive()
    session.last_seen_at = now


# For the log: a Signal's repr is "<Signal object at 0x...>".
_SIGNAL_NAMES = {session_started: "session_started", session_ended: "session_ended"}


def _send_robust(signal: Signal, **kwargs: Any) -> None:
    for receiver, response in signal.send_robust(sender=Session, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "A %s receiver (%r) raised %s",
                _SIGNAL_NAMES.get(signal, "signal"),
                receiver,
                type(response).__name__,
                exc_info=response,
            )
