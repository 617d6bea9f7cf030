"""Starting a session: reserve a slot, mint the engine's credential, create it at Avaturn, go live.

``start_session`` is the only way a session starts (the API view, and your
own code through ``django_avaturn.services``). Ends live in
``sessions.ending``. Two rules shape the code:

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

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NoReturn

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connections, router, transaction
from django.http import HttpRequest
from django.utils import timezone

from django_avaturn import users
from django_avaturn.conf import avaturn_settings, sdk_api_host
from django_avaturn.exceptions import (
    AvaturnError,
    NotConfigured,
    SessionLimitReached,
    SessionNotLive,
    SessionReplaced,
    SessionsDisabled,
    SessionStillEnding,
    StorageUnavailable,
    UpstreamError,
    UserNotActive,
)
from django_avaturn.logs import get_logger
from django_avaturn.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    EndReason,
    Session,
    SessionStatus,
    sessions_database,
)
from django_avaturn.sessions import abandonment, engines, statements, transitions
from django_avaturn.sessions.ending import terminate_claimed
from django_avaturn.sessions.plan import SessionPlan, build_plan
from django_avaturn.signals import send_logged, session_started
from django_avaturn.spend import limits
from django_avaturn.upstream.avaturn import IncompleteSession
from django_avaturn.upstream.clients import (
    START_MARGIN,
    get_avaturn_client,
    longest_in_flight,
    longest_start_calls,
    longest_terminate,
    unknown_outcome_hold,
)

logger = get_logger(__name__)


@dataclass(frozen=True)
class StartedSession:
    """What the browser needs to join a session. ``token`` is for the browser only."""

    session: Session
    token: str
    api_host: str
    # When the engine's credential expires (the OpenAI client secret); None for
    # engines whose session is bounded by max_duration alone.
    expires_at: datetime | None

    def __repr__(self) -> str:
        return f"StartedSession(session_id={self.session.session_id!r}, token='[redacted]')"


# --------------------------------------------------------------------------- starting


def start_session(
    user: AbstractBaseUser,
    *,
    request: HttpRequest | None = None,
    avatar_id: str | None = None,
    config_name: str = "",
    client_ref: str = "",
) -> StartedSession:
    """Start an Avaturn session for ``user`` and record it.

    ``client_ref`` names the start for ``abandon_start()``, for a caller that
    may leave before it learns the session id (the widget's page going away).

    Raises ``NotConfigured`` (nothing spent), ``UserNotActive`` (the user is
    inactive or gone: deactivated since the request authenticated them, or
    passed in so), ``SessionLimitReached`` (refuse policy, or the running
    sessions hold what is left of a minutes quota), ``QuotaExceeded``,
    ``UpstreamError``/``UpstreamTimeout`` (the row is marked failed
    and no upstream session survives; or, when Avaturn's create may have
    started a session it did not name, the row is left ending and holds its
    slot until that session cannot run: ``transitions.hold_unknown_outcome``),
    ``SessionReplaced`` (a newer start by the same user took the slot
    meanwhile), ``SessionNotLive`` (staff or its own page ended it
    meanwhile), ``SessionStillEnding`` (a session it must see ended first
    did not end; nothing was created) or ``StorageUnavailable``. A
    ``session_started`` receiver that ends the session it is given makes the
    start raise as one ended meanwhile (``SessionNotLive`` for most reasons).

    Nothing is created upstream while a session this start replaces, or one
    of the user's already ending, may still run there (``_wait_for_ends``):
    the caps bound the sessions alive at Avaturn, not only the rows.
    """
    if not getattr(user, "is_authenticated", False) or user.pk is None:
        raise ValueError("Sessions belong to a signed-in user.")
    plan = build_plan(request=request, avatar_id=avatar_id, config_name=config_name)
    policy = avaturn_settings.ON_SESSION_LIMIT
    cap = avaturn_settings.MAX_LIVE_SESSIONS_PER_USER
    api_host = sdk_api_host()
    bounds = UpstreamBounds.from_settings()
    # (The kill switch is read once, under the reservation's locks.)
    # Fail on missing keys before a slot is reserved or anything is spent; the
    # site's own code (the external engine's HOOK) too.
    engines.require(plan)
    engines.resolve(plan, request)
    avaturn = get_avaturn_client()

    reservation = _reserve_slot(
        user, plan, cap=cap, refuse=policy == "refuse", client_ref=client_ref
    )
    row = reservation.row
    # After the row is committed: an abandon that found no row had remembered
    # the reference first (see abandonment). Before anything is ended or
    # spent: the live sessions it claimed to replace were sent nothing, and
    # run on; those still starting stay claimed, for their own starts to end.
    if client_ref and abandonment.was_abandoned(user.pk, client_ref):
        transitions.release_claimed(reservation.replaced, sent=False)
        transitions.end_unstarted(row, reason=EndReason.ABANDONED)
        raise SessionNotLive()
    _clear_the_way(reservation, bounds)

    try:
        credential = engines.prepare(plan, request, row)
    except AvaturnError as exc:
        transitions.mark_failed(row, exc)
        raise

    try:
        created = avaturn.create_session(plan.payload_with(credential.conversation_engine))
    except IncompleteSession as exc:
        _fail_with_orphan(row, exc, exc.session_id)
        raise
    except UpstreamError as exc:
        if exc.may_be_running:
            # A session nobody can name may run: the row keeps its slot until it cannot.
            transitions.hold_unknown_outcome(row, exc)
        else:
            transitions.mark_failed(row, exc)
        raise
    except AvaturnError as exc:
        transitions.mark_failed(row, exc)
        raise

    expires_at = credential.expires_at
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
        if not transitions.refresh_if_present(row, fields=["end_reason"]):
            # The user was deleted meanwhile, the row with them.
            raise UserNotActive()
        raise _claimed_error(row.end_reason)

    send_logged(session_started, session=row, request=request)
    if row.status != SessionStatus.LIVE:
        # A receiver ended it through this instance: no token for a session that is
        # over. (Ended another way, say through a queryset, it is not seen here: the
        # token goes out for a session already terminated, which nobody can join.)
        raise _claimed_error(row.end_reason)
    logger.info("Started Avaturn session %s for user %s", row.session_id, row.user_id)
    return StartedSession(
        session=row,
        token=created.token,
        api_host=api_host,
        expires_at=expires_at,
    )


def _claimed_error(end_reason: str) -> AvaturnError:
    """What a start answers when its row was claimed (ended) before it went live."""
    if end_reason == EndReason.REPLACED:
        return SessionReplaced()
    if end_reason == EndReason.SHUTDOWN:
        return SessionsDisabled()
    if end_reason == EndReason.USER:
        # Deactivated meanwhile: answered as the reservation answers an inactive user.
        return UserNotActive()
    return SessionNotLive()


@dataclass(frozen=True)
class Reservation:
    """A start's ``STARTING`` row, and the user's sessions it must see end before it creates.

    ``replaced``: the rows this start claimed (``ENDING``, reason
    ``replaced``); it terminates the live ones itself. ``ending``: the
    primary keys of every row of the user's that may still run upstream
    and that the cap did not count: those it replaced (claimed by it or,
    in a race, by someone else), and those already ending (a Stop's
    terminate in flight, an earlier start's replaced rows).
    """

    row: Session
    replaced: list[Session] = field(default_factory=list)
    ending: list[int] = field(default_factory=list)


def _reserve_slot(
    user: AbstractBaseUser, plan: SessionPlan, *, cap: int, refuse: bool, client_ref: str = ""
) -> Reservation:
    """Insert a STARTING row under every limit; return it with the rows it replaces.

    PostgreSQL serialises a user's concurrent starts on the user row's lock
    (and all starts on an advisory lock while a site-wide cap is set). SQLite
    has no row locks, but the INSERT comes first so the transaction takes
    SQLite's write lock before it reads anything: concurrent starts queue on
    the busy timeout instead of reading a stale count. In a transaction of
    the sessions' database, where the user is too (their foreign key joins
    them).
    """
    site_cap = limits.site_cap()
    # The site's QUOTA_HOOK, outside the transaction: it holds no lock while it runs.
    quota = limits.quota_for(user)
    alias = sessions_database()
    connection = connections[alias]
    locks_rows = connection.features.has_select_for_update
    # Whether the user, the switch and the rows are read by the statements
    # written once (else through the ORM); asked once per reservation.
    together = statements.reads_together()
    # PostgreSQL's locks and the INSERT in one statement where it can.
    at_once = connection.vendor == "postgresql" and together
    try:
        # Durable: inside a caller's transaction, a rollback would take the row
        # with it while the session it is for ran on at Avaturn, unknown to all.
        with transaction.atomic(using=alias, durable=True):
            row = Session(
                user_id=user.pk,
                status=SessionStatus.STARTING,
                avatar_id=plan.avatar_id,
                model=plan.model,
                voice=plan.voice,
                engine=plan.engine,
                config_name=plan.config_name,
                max_duration=plan.max_duration,
                client_ref=client_ref,
            )
            if at_once:
                locks = limits.reservation_locks(site_cap=site_cap is not None)
                if not statements.insert_row_locking_user(row, locks):
                    raise UserNotActive()
            else:
                if locks_rows:
                    _ensure_still_active(user.pk, lock=True, together=together)
                if site_cap is not None:
                    limits.lock_for_site_cap()
                statements.insert_row(row)
                limits.hold_switch()
            # Everything below is read under every lock (the switch may have
            # flipped since the request began), and on SQLite the user under
            # the write lock the INSERT took (see above).
            mine = _read_under_locks(row, with_user=not locks_rows, together=together)
            holders, ending = [], []
            for pk, status, started_at, max_duration in mine:
                if status in transitions.CAPPED_STATUSES:
                    holders.append((pk, started_at, max_duration))
                else:
                    ending.append(pk)
            excess = len(holders) + 1 - cap
            leaving = [pk for pk, *_ in holders[:excess]] if excess > 0 and not refuse else []
            max_duration = limits.ensure_quota(
                user,
                quota=quota,
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
                # The replaced rows are not counted: this start sees them end first.
                limits.ensure_site_capacity(cap=site_cap, new_row=row, leaving=len(replaced))
            return Reservation(row, replaced, ending=[*leaving, *ending])
    except DatabaseError as exc:
        raise StorageUnavailable() from exc


def _read_under_locks(row: Session, *, with_user: bool, together: bool) -> list[tuple[Any, ...]]:
    """Refuse an inactive user (if ``with_user``) or a switched-off site; else the user's rows.

    The rows: ``(pk, status, started_at, max_duration)`` of the user's other
    active rows, oldest first (not whole rows: those are read only when some
    are replaced); both the rows the cap counts and those already ending.
    One statement where ``together`` (``statements.reads_together()``:
    ``statements.reservation_read``), else one read each.
    """
    if together:
        read = statements.reservation_read(
            row.user_id, ACTIVE_STATUSES, other_than=row.pk, with_user=with_user
        )
        if read.user_active is False:
            raise UserNotActive()
        if not limits.enabled_with(read.switch):
            raise SessionsDisabled()
        return read.rows
    if with_user:
        _ensure_still_active(row.user_id, lock=False, together=False)
    limits.ensure_enabled()
    return statements.active_rows(row.user_id, ACTIVE_STATUSES, other_than=row.pk)


def _ensure_still_active(user_pk: Any, *, lock: bool, together: bool) -> None:
    """Refuse a user deactivated or deleted since the request authenticated them.

    Deactivation ends the sessions a user has (``users``); one reserved
    after it would run on, for an inactive user, until it expired. Read
    under the reservation's lock (``lock``: the user's rows' own, which
    deactivation's UPDATE takes too; ``users.lock_user_rows``), so the two
    cannot miss each other.
    By a statement written once where ``together``
    (``statements.reads_together()``), else through the ORM.
    """
    if together:
        active = statements.user_active(user_pk, lock=lock)
    else:
        user_model = get_user_model()
        # Where deactivation writes it: a replica may not show it yet.
        written = router.db_for_write(user_model)
        if lock:
            users.lock_user_rows(user_model, user_pk, using=written)
        user_row = user_model._default_manager.using(written).filter(pk=user_pk)
        fields = ["pk", "is_active"] if statements.user_has_is_active(user_model) else ["pk"]
        found = list(user_row.values_list(*fields))
        active = bool(found) and (len(fields) == 1 or bool(found[0][1]))
    if not active:
        raise UserNotActive()


# How long a start polls between two reads of the rows it waits for (seconds).
_FIRST_PAUSE = 0.02
_LONGEST_PAUSE = 0.25
# How often a waiting start stamps its row: well within the crashed-start
# threshold (``longest_start()``, at least ``START_MARGIN``).
_STAMP_EVERY = START_MARGIN / 2


@dataclass(frozen=True)
class UpstreamBounds:
    """The longest the upstream calls of a start or an end can take, from the settings.

    ``terminate``: one terminate with its retries and their backoff.
    ``start``: a start's mint, create, and the terminate of what it created
    if it must (the row was claimed meanwhile, say): everything a start does
    upstream once it stops waiting. A start waits at most ``start`` too.
    ``in_flight``: the latest after its reservation that a start may still
    call an upstream. ``unknown_outcome``: how long a row whose create had
    an unknown outcome holds its slot. All from ``upstream.clients``, whose
    ``longest_start`` (the expiry's crashed-start threshold) shares their
    parts and margin.
    """

    terminate: float
    start: float
    in_flight: float
    unknown_outcome: float

    @classmethod
    def from_settings(cls) -> UpstreamBounds:
        return cls(
            terminate=longest_terminate(),
            start=longest_start_calls(),
            in_flight=longest_in_flight(),
            unknown_outcome=unknown_outcome_hold(),
        )


def _wait_for_ends(row: Session, pks: list[int], bounds: UpstreamBounds) -> None:
    """Return once none of the rows ``pks`` may still run upstream; else fail the start.

    The per-user and site caps count what may run at Avaturn, so a start
    creates nothing while a session it replaced (or one of the user's
    already ending) may still be alive: a create in flight, a terminate not
    yet answered. It polls, outside any transaction, until each row is
    final, or could no longer have an upstream call in flight (see
    ``_in_flight_until``): a row claimed while it started whose start died
    (nothing we could end). A row whose terminate failed (ending past that
    time, or back to live) still holds its slot: the start fails. So does
    one still in flight after ``UpstreamBounds.start``; one whose create had
    an unknown outcome, and may run longer than this start may wait, fails
    it at once. If this start's own row is claimed meanwhile (a newer start
    replaced it, staff, the kill switch), it ends it and stops, having
    created nothing. It stamps its row every ``_STAMP_EVERY`` seconds
    (``_resume``), so the expiry command's sweep of crashed starts does not
    take it for one.
    """
    give_up = time.monotonic() + bounds.start
    stamp_at = time.monotonic() + _STAMP_EVERY
    pause = _FIRST_PAUSE
    watched = Session.objects.primary().filter(pk__in=[row.pk, *pks])
    watched = watched.only(
        "status", "end_reason", "session_id", "awaiting_retry", "created_at", "updated_at"
    )
    while True:
        try:
            states = {state.pk: state for state in watched.all()}
        except DatabaseError as exc:
            transitions.mark_failed(row, exc)
            raise StorageUnavailable() from exc
        own = states.pop(row.pk, None)
        if own is None:
            raise UserNotActive()  # the user was deleted meanwhile, the row with them
        if own.status != SessionStatus.STARTING:
            _stop_unstarted(row, own)
        now = timezone.now()
        waiting = False
        for other in states.values():
            if other.status in FINAL_STATUSES:
                continue
            until = _in_flight_until(other, bounds)
            in_flight = other.status == SessionStatus.ENDING and now < until
            if in_flight and transitions.is_unknown_outcome(other):
                # Nothing ends it sooner than its hold, longer than a request should wait.
                _give_up(row, pks, "a session of the user's may run after a failed create")
            elif in_flight:
                waiting = True
            elif other.status != SessionStatus.ENDING or other.session_id is not None:
                # Its terminate failed (back to live, or left ending for the
                # expiry command's retry): it may still run, and holds its slot.
                _give_up(row, pks, "a session of the user's could not be ended")
        if not waiting:
            return
        if time.monotonic() + pause > give_up:
            _give_up(row, pks, "a session of the user's did not end in time")
        if time.monotonic() >= stamp_at:
            # A wait may outlast the crashed-start threshold: this start is alive.
            _resume(row)
            stamp_at = time.monotonic() + _STAMP_EVERY
        time.sleep(pause)
        pause = min(pause * 1.5, _LONGEST_PAUSE)


def _resume(row: Session) -> None:
    """Stamp this start's row as alive (``transitions.resume_start``), or stop if it was claimed.

    The expiry command's sweep of crashed starts fails a row ``starting``
    and not written for ``longest_start()``, a threshold that covers a
    start's own upstream calls: not the terminates of what it replaces, nor
    its wait for the user's ending rows. A start stamps its row during and
    after those. A row claimed meanwhile (by the sweep too) ends the start,
    which has created nothing.
    """
    try:
        if transitions.resume_start(row):
            return
        own = Session.objects.primary().filter(pk=row.pk).only("status", "end_reason").first()
    except DatabaseError as exc:
        transitions.mark_failed(row, exc)
        raise StorageUnavailable() from exc
    if own is None:
        raise UserNotActive()  # the user was deleted meanwhile, the row with them
    _stop_unstarted(row, own)


def _clear_the_way(reservation: Reservation, bounds: UpstreamBounds) -> None:
    """End the sessions the start replaces and wait for the user's others still ending.

    The crashed-start threshold (``longest_start()``) allows one terminate's
    time before a start's own calls (``_end_replaced`` ends several
    together): after several, or a wait, the start stamps its row
    (``_resume``), and the threshold counts its own calls from there.
    """
    row = reservation.row
    try:
        _end_replaced(reservation.replaced)
    except AvaturnError as exc:
        transitions.mark_failed(row, exc)
        raise
    # Those just terminated have ended; any other may still be running upstream.
    ended = {old.pk for old in reservation.replaced if old.status in FINAL_STATUSES}
    still_ending = [pk for pk in reservation.ending if pk not in ended]
    if still_ending:
        _wait_for_ends(row, still_ending, bounds)
    terminated = [old for old in reservation.replaced if old.session_id is not None]
    if len(terminated) > 1 or still_ending:
        _resume(row)


def _in_flight_until(other: Session, bounds: UpstreamBounds) -> datetime:
    """The latest an ``ending`` row may still have an upstream call in flight.

    With a session id, it is a terminate, begun when the row was claimed
    (``updated_at``). A create with an unknown outcome
    (``transitions.is_unknown_outcome``) may have started a session that
    runs until ``bounds.unknown_outcome`` after it was held (``updated_at``). Without
    either, the row was claimed while its start was ending what it replaced,
    waiting or talking to the upstreams: that start makes its last upstream
    call (the terminate of what it created, having found its row claimed)
    at most ``bounds.in_flight`` after its reservation
    (``transitions.claimed_start_calls_until``).
    """
    if other.session_id is not None:
        return other.updated_at + timedelta(seconds=bounds.terminate)
    if transitions.is_unknown_outcome(other):
        return other.updated_at + timedelta(seconds=bounds.unknown_outcome)
    return transitions.claimed_start_calls_until(other, bounds.in_flight)


def _give_up(row: Session, pks: list[int], why: str) -> NoReturn:
    exc = SessionStillEnding()
    logger.warning("Session start (row %s) created nothing: %s (rows %s)", row.pk, why, pks)
    transitions.mark_failed(row, exc)
    raise exc


def _stop_unstarted(row: Session, claimed: Session) -> NoReturn:
    """This start's row was claimed while it waited: end it (nothing was created) and raise."""
    if claimed.status == SessionStatus.ENDING:
        row.status, row.end_reason, row.started_at = (
            SessionStatus.ENDING,
            claimed.end_reason,
            None,
        )
        transitions.finish_claimed([row], only_without_id=True)
    raise _claimed_error(claimed.end_reason)


def _end_replaced(replaced: list[Session]) -> None:
    """Terminate the sessions a start replaces, all at once; raise the first failure after all.

    Together (``ending.terminate_claimed``, a thread each), so that ending
    several takes one terminate's time, as the crashed-start threshold,
    ``longest_in_flight()`` and each replaced row's own bound (its claim
    stamp plus one terminate) allow. They are at most the user's former cap.
    One that Avaturn would not end goes back to live (and the start fails);
    stopping at it would leave the rest ``ending``, still running, until the
    expiry command's sweep of stuck ends.
    """
    # Still starting (no session id): its own request ends what it creates
    # (_wait_for_ends waits for that), or stops before creating anything.
    created = [old for old in replaced if old.session_id is not None]
    if not created:
        return
    try:
        results = terminate_claimed(created, max_workers=len(created))
        errors: list[Exception | None] = [result.error for result in results]
    except NotConfigured as exc:
        errors = [exc] * len(created)  # nothing was sent: they went back to live
    failure: Exception | None = None
    for old, error in zip(created, errors, strict=True):
        if error is not None:
            # Back to live, or left for the expiry command: as its row now says.
            transitions.refresh_if_present(old)
            failure = failure or error
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
        # The caller says what happens next (leave_for_retry): a row may be gone with its user.
        logger.error("Could not terminate orphaned Avaturn session %s: %s", session_id, exc)
        return False
    return True
