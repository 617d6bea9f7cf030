"""Which of a start's and an end's commits wait for the disk on PostgreSQL.

Every commit but the activation's may be undone by a crash of the database
server without losing track of a session (``transitions``' docstring), so
those commit asynchronously; the activation, and any transaction a site
opened around this app's code, wait.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection, transaction

from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions import statements
from django_avaturn.sessions.ending import end_session
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.sessions.starting import start_session
from tests.helpers import LIST_URL, csrf_delete, csrf_post

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's synchronous_commit"),
]


@dataclass(frozen=True)
class Statement:
    sql: str
    in_transaction: bool
    # ``synchronous_commit`` as the statement left its transaction.
    synchronous_commit: str


def _show(raw: Any) -> str:
    with raw.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return str(cursor.fetchone()[0])


@contextmanager
def synchronous_commit_after_each_statement() -> Iterator[list[Statement]]:
    """Record, for each statement run, the ``synchronous_commit`` its transaction then has.

    A statement run in autocommit is its own transaction, over once it
    returns: it runs here between a ``BEGIN`` and a ``COMMIT`` of the same
    connection (the server's explicit transaction block, which Django does
    not see), so that what it set for its transaction can be read before
    the commit. Inside Django's transactions the setting is read after
    each statement, on another cursor of the same connection.
    """
    seen: list[Statement] = []
    busy = False

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal busy
        if busy:
            return execute(sql, params, many, context)
        busy = True
        raw = connection.connection
        own = not connection.in_atomic_block
        try:
            if own:
                raw.execute("BEGIN")
            try:
                result = execute(sql, params, many, context)
                seen.append(Statement(sql, not own, _show(raw)))
            finally:
                if own:
                    raw.execute("COMMIT")
        finally:
            busy = False
        return result

    with connection.execute_wrapper(record):
        yield seen


def _updates(seen: list[Statement]) -> list[Statement]:
    return [s for s in seen if s.sql.startswith("UPDATE") and not s.in_transaction]


def test_only_the_activation_of_a_start_and_an_end_waits_for_the_disk(
    api_client: Any, upstream: Any
) -> None:
    with synchronous_commit_after_each_statement() as seen:
        started = csrf_post(api_client, LIST_URL, {})
        assert started.status_code == 201
        session_id = started.json()["session_id"]
        stopped = csrf_delete(api_client, f"{LIST_URL}{session_id}/")
        assert stopped.status_code == 204, stopped.content
    assert Session.objects.get(session_id=session_id).status == SessionStatus.ENDED

    reservation = [s for s in seen if s.in_transaction]
    assert len(reservation) >= 2, reservation
    # Until the reservation's read the transaction waits; its commit does not.
    assert [s.synchronous_commit for s in reservation] == ["on"] * (len(reservation) - 1) + ["off"]
    activation, claim, finish = _updates(seen)
    assert "started_at" in activation.sql and activation.synchronous_commit == "on"
    assert "end_reason" in claim.sql and claim.synchronous_commit == "off"
    assert "ended_at" in finish.sql and finish.synchronous_commit == "off"
    # Nothing else this app wrote on the way.
    assert not [s for s in seen if s.sql.startswith(("INSERT", "UPDATE", "DELETE"))][4:]


def test_a_claim_that_claims_nothing_sets_nothing(user: Any) -> None:
    ended = Session.objects.create(
        user=user, status=SessionStatus.ENDED, session_id="gone", end_reason=EndReason.CLIENT
    )
    with synchronous_commit_after_each_statement() as seen:
        assert end_session(ended, reason=EndReason.CLIENT) == Outcome.SKIPPED
    (claim,) = _updates(seen)
    assert claim.synchronous_commit == "on"


def test_inside_a_sites_transaction_every_commit_is_the_sites(user: Any, upstream: Any) -> None:
    with transaction.atomic():
        started = start_session(user)
        end_session(started.session, reason=EndReason.CLIENT)
        assert _show(connection.connection) == "on"
    assert Session.objects.get(pk=started.session.pk).status == SessionStatus.ENDED


def test_an_outermost_block_in_a_transaction_begun_by_hand_is_not_this_apps() -> None:
    with transaction.atomic():
        assert statements.commits_asynchronously(connection, own_transaction=True)
        assert not statements.commits_asynchronously(connection, own_transaction=False)
    assert statements.commits_asynchronously(connection, own_transaction=False)
    transaction.set_autocommit(False)
    try:
        assert not statements.commits_asynchronously(connection, own_transaction=False)
        with transaction.atomic():
            assert not statements.commits_asynchronously(connection, own_transaction=True)
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)
