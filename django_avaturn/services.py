"""Starting and ending sessions: the one place that coordinates upstreams and the database.

Views, the admin, the management command and the widget all come through
here. Two rules shape the code:

* No database transaction is held open across an upstream call. A start
  reserves its slot in a short transaction (``STARTING`` row), talks to
  OpenAI and Avaturn, then activates the row with a conditional ``UPDATE``.
* Every state change is a conditional ``UPDATE ... WHERE status = ...``
  (``transitions``), so two callers racing to end (or replace) the same
  session cannot both win: the loser sees zero rows updated and stands back.
  The winner alone calls Avaturn's DELETE, and the row ends once, with the
  winner's reason.

Whatever fails after Avaturn created a session, that session is terminated
upstream before the error propagates, so nothing is left running unrecorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from django_avaturn import limits, transitions
from django_avaturn.avaturn_client import IncompleteSession
from django_avaturn.clients import get_avaturn_client, get_openai_secrets
from django_avaturn.exceptions import (
    AvaturnError,
    NotConfigured,
    SessionLimitReached,
    SessionNotLive,
    SessionReplaced,
    SessionsDisabled,
    StorageUnavailable,
    UserNotActive,
)
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.outcomes import Outcome
from django_avaturn.session_config import SessionPlan, build_plan
from django_avaturn.signals import send_logged, session_started
from django_avaturn.validation import (
    required_choice_setting,
    required_int_setting,
    sdk_api_host,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartedSession:
    """What the browser needs to join a session. ``token`` is for the browser only."""

    session: Session
    token: str
    api_host: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"StartedSession(session_id={self.session.session_id!r}, token='[redacted]')"


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
        transitions.mark_failed(row, exc)
        raise

    try:
        secret = secrets.mint(session=plan.realtime_session, ttl_seconds=plan.client_secret_ttl)
    except AvaturnError as exc:
        transitions.mark_failed(row, exc)
        raise

    try:
        created = avaturn.create_session(plan.avaturn_payload(secret.value))
    except IncompleteSession as exc:
        _fail_with_orphan(row, exc, exc.session_id)
        raise
    except AvaturnError as exc:
        transitions.mark_failed(row, exc)
        raise

    expires_at = datetime.fromtimestamp(secret.expires_at, tz=dt_timezone.utc)
    try:
        activated = transitions.activate(row, created.session_id, expires_at)
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
            transitions.finish_without_upstream(row, created.session_id)
        else:
            transitions.leave_for_retry(row, created.session_id)
        try:
            row.refresh_from_db(fields=["end_reason"])
        except Session.DoesNotExist:
            # The user was deleted meanwhile, the row with them.
            raise UserNotActive() from None
        if row.end_reason == EndReason.REPLACED:
            raise SessionReplaced()
        if row.end_reason == EndReason.SHUTDOWN:
            raise SessionsDisabled()
        if row.end_reason == EndReason.USER:
            # Deactivated meanwhile: answered as the reservation answers an inactive user.
            raise UserNotActive()
        raise SessionNotLive()

    send_logged(session_started, session=row, request=request)
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
                    user_id=user.pk, status__in=transitions.CAPPED_STATUSES
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
            replaced = transitions.claim_replaced(leaving) if leaving else []
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


def _end_replaced(replaced: list[Session]) -> None:
    """Terminate the sessions a start replaces; raise the first failure after trying all.

    One that Avaturn would not end goes back to live (and the start fails);
    stopping at it would leave the rest ``ending``, still running, until the
    expiry command's sweep of stuck ends.
    """
    failure: AvaturnError | None = None
    for old in replaced:
        if old.session_id is None:
            # Still starting: its own request will see it was replaced and clean up.
            continue
        try:
            _terminate_claimed(old)
        except AvaturnError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


def _fail_with_orphan(row: Session, exc: BaseException, session_id: str) -> None:
    """A start failed after Avaturn created ``session_id``: end it, then record the failure.

    If Avaturn cannot end it either, the row is left for the expiry command to
    retry rather than recorded failed while the session may still run.
    """
    if _terminate_orphan(session_id):
        transitions.mark_failed(row, exc, session_id=session_id)
    else:
        transitions.leave_for_retry(row, session_id, exc)


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


# --------------------------------------------------------------------------- ending


def end_session(session: Session, *, reason: str, detail: str = "") -> Outcome:
    """End ``session`` now: terminate it upstream once and record ``reason`` once.

    Returns ``TERMINATED``, or ``ALREADY_GONE`` when Avaturn had ended it by
    itself. Idempotent: ending an ended session returns ``SKIPPED`` without
    calling Avaturn; so does one whose end is in flight elsewhere, which is
    taken over so that end cannot be undone. A session still starting is
    claimed and returns ``STOPPED``: its own request terminates what Avaturn
    creates. If Avaturn cannot be reached the ``UpstreamError`` propagates
    and the row goes back to live for a retry when its asker retries (the
    visitor, a replacing start, the expiry command; see
    ``transitions.release_claimed``), else stays ending for the expiry
    command's next run.
    """
    if reason not in EndReason.values:
        raise ValueError(f"Unknown end reason {reason!r}.")
    if not transitions.claim_for_end(session, reason=reason, detail=detail):
        if session.status == SessionStatus.ENDING:
            transitions.take_over([session])
        return Outcome.SKIPPED
    if session.started_at is None:  # only an activation sets it
        # Claimed while starting: its own request terminates what Avaturn creates.
        return Outcome.STOPPED
    return _terminate_claimed(session)


def _terminate_claimed(session: Session) -> Outcome:
    """Terminate a live row this caller moved to ENDING, then give it its final status."""
    assert session.session_id is not None
    try:
        client = get_avaturn_client()
    except NotConfigured:
        # Nothing was sent, and nothing can be until the setting is fixed.
        transitions.release_claimed([session], sent=False)
        transitions.refresh_if_present(session)
        raise
    try:
        terminated = client.terminate_session(session.session_id)
    except AvaturnError:
        transitions.release_claimed([session])
        transitions.refresh_if_present(session)
        raise
    # finish_claimed sets the final fields on the instance too: no read back.
    transitions.finish_claimed([session])
    logger.info(
        "Ended Avaturn session %s (%s)%s",
        session.session_id,
        session.end_reason,
        "" if terminated else ", already gone upstream",
    )
    return Outcome.TERMINATED if terminated else Outcome.ALREADY_GONE
