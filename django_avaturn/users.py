"""Signal receivers connected in ``AvaturnConfig.ready()``: a user who goes keeps no session.

A user deleted, deactivated, signed out or whose password changed can no
longer end their sessions from the browser (Stop and the heartbeat answer
403: a new password hash signs out every other browser, as Django checks
the session's auth hash), so their sessions are ended here, with the
client's retries and at most ``TERMINATE_CONCURRENCY`` calls at once.

The upstream calls wait for the change to commit (``transaction.on_commit``;
at once outside a transaction). Deleting a user runs inside the deletion's
transaction, and the admin saves inside one: calling Avaturn there would
hold the rows' locks (on SQLite, the database's write lock) for up to the
client's timeouts, and a rollback would leave sessions terminated that the
database still calls live.

If Avaturn still cannot be reached, the change goes ahead anyway: account
deletion is often a legal duty, and blocking it on a vendor's outage is worse
than the bounded cost of a session that ends by itself (``max_duration``; at
most ``user_absent_timeout`` once the browser leaves). Each failure is logged
at ERROR with the session id. A session of a deleted user is terminated
after its row has gone with the user (nothing retries it: an operator ends
it by hand), so no ``session_ended`` is sent for it; any other user's stays
``ending`` and the expiry command's next run retries it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Model

from django_avaturn.exceptions import AvaturnError
from django_avaturn.logs import get_logger
from django_avaturn.models import EndReason, Session, SessionStatus, sessions_database
from django_avaturn.sessions import transitions
from django_avaturn.sessions.ending import Result, end_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.upstream.clients import get_avaturn_client
from django_avaturn.upstream.pool import run_bounded

logger = get_logger(__name__)

# Starting rows too: claimed, their own request terminates what Avaturn creates.
_ENDABLE = (SessionStatus.STARTING, SessionStatus.LIVE)
_STILL_RUNNING_MESSAGE = (
    "%s user %s: could not terminate Avaturn session %s (%s). It keeps running until "
    "its max_duration or user_absent_timeout; end it by hand."
)
_LEFT_FOR_RETRY_MESSAGE = (
    "%s user %s: could not terminate Avaturn session %s (%s). Its row stays ending and "
    "the expiry command's next run retries it."
)
# Set on a user instance by note_password_change() for the post_save that follows.
_PASSWORD_CHANGED = "_django_avaturn_password_changed"


def end_sessions_of_deleted_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``pre_delete`` of ``AUTH_USER_MODEL``: terminate the user's sessions once it is gone.

    The rows cascade away with the user, so the session ids are read now. A
    start still in flight finds its row gone and terminates what it created.
    Rows left ``ending`` for the expiry command's retry are terminated too:
    nothing would retry them once they are gone.
    """
    if instance.pk is None:
        return
    _wait_for_starts_in_flight(instance)
    rows = Session.objects.primary().filter(user_id=instance.pk)
    # Locked: a start whose row is read here as starting cannot activate it
    # (and record a session id this list would miss) before the rows go; it
    # then finds its row gone and terminates what it created.
    locked = rows.select_for_update() if _locks_rows(Session) else rows
    values = list(locked.values_list("pk", "status", "session_id", "engine"))
    session_ids = [
        session_id
        for _pk, status, session_id, _engine in values
        if session_id is not None and status in (SessionStatus.LIVE, SessionStatus.ENDING)
    ]
    # A site engine socket closes once the deletion commits, whether or not the
    # terminate below gets through (closing it ends its Avaturn session too).
    transitions.tell_site_engine(
        [
            Session(pk=pk, engine=engine, end_reason=EndReason.USER)
            for pk, status, _session_id, engine in values
            if status in (SessionStatus.STARTING, SessionStatus.LIVE, SessionStatus.ENDING)
        ]
    )
    # Django listed the rows to cascade before this signal; a start may have
    # added one since, which would fail the deletion on its foreign key.
    rows.delete()
    if session_ids:
        user_pk = instance.pk
        _after_commit(lambda: _terminate_upstream(user_pk, session_ids))


def _wait_for_starts_in_flight(user: Any) -> None:
    """Take the user's row locks, as a start's reservation does (PostgreSQL).

    Reservations in flight finish first (their rows are then seen here), and
    later ones wait for the deletion and then find no user. SQLite's write
    lock orders the two already.
    """
    if _locks_rows(type(user)):
        lock_user_rows(type(user), user.pk, using=router.db_for_write(type(user)))


def lock_user_rows(user_model: type[Model], user_pk: Any, *, using: str) -> None:
    """Lock the user's rows (``SELECT ... FOR UPDATE``), the root table's first.

    A user model spread over tables (multi-table inheritance) has a row in
    each. Django's ``save()`` writes the parents' rows before the child's;
    a start's reservation and a deletion lock them in that order too, so
    none of the three waits on another in a cycle (a deadlock PostgreSQL
    would end by failing one). Where every link up is the primary key, each
    row has the user's key and is locked by a statement of its own. Other
    shapes (a child with a primary key of its own, multiple inheritance)
    lock the joined rows in one statement, in the order the database takes
    them. One statement for a user model of one table. Call only where the
    database has row locks.
    """
    concrete = user_model._meta.concrete_model or user_model
    if not _keyed_by_the_users_key(concrete):
        list(concrete._base_manager.using(using).select_for_update().filter(pk=user_pk))
        return
    for model in [*reversed(concrete._meta.get_parent_list()), concrete]:
        rows = model._base_manager.using(using).select_for_update().filter(pk=user_pk)
        list(rows.values_list("pk"))


def _keyed_by_the_users_key(model: type[Model]) -> bool:
    """Whether every table of the model's rows has the same key: each link up is the primary key."""
    pk = model._meta.pk
    parents = model._meta.parents
    if not parents:
        return True
    if len(parents) > 1 or pk is None or pk not in parents.values():
        return False
    (parent,) = parents
    return _keyed_by_the_users_key(parent)


def _locks_rows(model: type[Any]) -> bool:
    return bool(connections[router.db_for_write(model)].features.has_select_for_update)


def end_sessions_of_deactivated_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of ``AUTH_USER_MODEL``: an inactive user keeps no running session.

    Costs a query only when an inactive user is saved, never for active ones.
    """
    if getattr(instance, "is_active", True) or instance.pk is None:
        return
    user_pk = instance.pk
    _after_commit(lambda: _end_sessions_of(user_pk, EndReason.USER, action="Deactivating"))


def note_password_change(
    sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    """``pre_save`` of ``AUTH_USER_MODEL``: will this save change the stored password hash?

    Compared with the stored hash, not with what the instance was loaded
    with: a set_password(), a reset, a hash assigned directly, an unusable
    password, a hash upgraded at sign-in. Each signs the user out of every
    other browser (Django checks the session's auth hash, derived from the
    password hash), so those browsers can no longer end their sessions.
    Costs one query per save that may write the password; none for saves
    limited to other fields (``update_fields``, as sign-in's ``last_login``).
    """
    instance.__dict__.pop(_PASSWORD_CHANGED, None)
    if raw or instance.pk is None or instance._state.adding:
        return
    if update_fields is not None and "password" not in update_fields:
        return
    fields = {field.attname for field in sender._meta.concrete_fields}
    if "password" not in fields or "password" in instance.get_deferred_fields():
        return
    stored = list(
        sender._default_manager.using(kwargs.get("using"))
        .filter(pk=instance.pk)
        .values_list("password", flat=True)
    )
    if stored and stored[0] != instance.password:
        instance.__dict__[_PASSWORD_CHANGED] = True


def end_sessions_after_password_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of ``AUTH_USER_MODEL``: a new password hash ends the user's sessions.

    As signing out does, on a thread of its own once the change commits: the
    request that changed the password does not wait on Avaturn.
    """
    if not instance.__dict__.pop(_PASSWORD_CHANGED, False) or instance.pk is None:
        return
    user_pk = instance.pk
    _after_commit(
        lambda: _in_background(
            lambda: _end_sessions_of(
                user_pk, EndReason.PASSWORD_CHANGED, action="Changing the password of"
            )
        )
    )


def end_sessions_of_signed_out_user(
    sender: Any, request: Any = None, user: Any = None, **kwargs: Any
) -> None:
    """``user_logged_out``: signing out ends the user's sessions.

    Signed out, the widget's Stop and heartbeats answer 403, so a session
    left open in another tab could not be ended from the browser any more.
    All of the user's sessions end, on every device: with the default
    ``MAX_LIVE_SESSIONS_PER_USER`` of 1 there is only one.
    """
    if user is None or user.pk is None:
        return
    user_pk = user.pk
    _after_commit(
        lambda: _in_background(
            lambda: _end_sessions_of(user_pk, EndReason.SIGNED_OUT, action="Signing out")
        )
    )


def _after_commit(callback: Callable[[], None]) -> None:
    def run() -> None:
        # Never into the caller's request: a deletion or a sign-out must go
        # ahead whatever happens to the sessions (each failure is logged).
        try:
            callback()
        except Exception:
            logger.exception("Ending the sessions of a user who went failed")

    transaction.on_commit(run, using=sessions_database())


def _in_background(callback: Callable[[], None]) -> None:
    """Run ``callback`` on a thread of its own: a sign-out or a password change does not wait.

    Not a daemon: a process that exits (a script that signs users out) waits
    for the terminations instead of abandoning them.
    """

    def run() -> None:
        try:
            callback()
        except Exception:
            logger.exception("Ending the sessions of a user who went failed")
        finally:
            connections.close_all()

    threading.Thread(target=run, name="avaturn-end-sessions", daemon=False).start()


def _end_sessions_of(user_pk: Any, reason: str, *, action: str) -> None:
    def log_failure(result: Result) -> None:
        if result.outcome is Outcome.FAILED:
            logger.error(
                _LEFT_FOR_RETRY_MESSAGE, action, user_pk, result.session.session_id, result.detail
            )

    sessions = Session.objects.primary().filter(user_id=user_pk, status__in=_ENDABLE)
    if not sessions.exists():
        return  # the usual case, and no reason to need the keys (end_sessions checks them)
    try:
        end_sessions(sessions, reason=reason, on_result=log_failure)
    except AvaturnError as exc:  # not configured: nothing was claimed
        ids = list(sessions.values_list("session_id", flat=True))
        logger.error(_STILL_RUNNING_MESSAGE, action, user_pk, ids, exc)


def _terminate_upstream(user_pk: Any, session_ids: list[str]) -> None:
    try:
        client = get_avaturn_client()
    except AvaturnError as exc:
        logger.error(_STILL_RUNNING_MESSAGE, "Deleting", user_pk, session_ids, exc)
        return
    outcomes = run_bounded(client.terminate_session, session_ids)
    for session_id, outcome in zip(session_ids, outcomes, strict=True):
        if isinstance(outcome, Exception):
            logger.error(_STILL_RUNNING_MESSAGE, "Deleting", user_pk, session_id, outcome)
