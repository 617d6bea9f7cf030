"""Every commit of a start and an end waits for the disk on PostgreSQL.

Each records a state a lost commit would leave wrong: a Stop acknowledged
while its claim of a starting row is undone lets that start go live; a
finish undone ends the row again later and sends ``session_ended`` twice; a
reservation undone with its sequence lets another start reuse its key.
So none turns ``synchronous_commit`` off (the test database keeps the
server's default, on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from django.db import connection

from django_avaturn.models import Session, SessionStatus
from tests.helpers import LIST_URL, csrf_delete, csrf_post

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's synchronous_commit"),
]


@dataclass(frozen=True)
class Statement:
    sql: str
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
                seen.append(Statement(sql, _show(raw)))
            finally:
                if own:
                    raw.execute("COMMIT")
        finally:
            busy = False
        return result

    with connection.execute_wrapper(record):
        yield seen


def test_every_commit_of_a_start_and_an_end_waits_for_the_disk(
    api_client: Any, upstream: Any
) -> None:
    with synchronous_commit_after_each_statement() as seen:
        started = csrf_post(api_client, LIST_URL, {})
        assert started.status_code == 201
        session_id = started.json()["session_id"]
        stopped = csrf_delete(api_client, f"{LIST_URL}{session_id}/")
        assert stopped.status_code == 204, stopped.content
    assert Session.objects.get(session_id=session_id).status == SessionStatus.ENDED

    writes = [s for s in seen if s.sql.startswith(("WITH", "INSERT", "UPDATE", "DELETE"))]
    # The reservation's, the activation, the end's claim and its finish.
    assert len(writes) == 4, writes
    assert [s.synchronous_commit for s in seen] == ["on"] * len(seen)
