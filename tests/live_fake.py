"""Helpers for tests that run against the real loopback fake over HTTP.

Its fixtures (``live_fake``) are registered for the whole suite by
``pytest_plugins`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections

from django_avaturn.models import ACTIVE_STATUSES, Session, SessionStatus
from django_avaturn.testing import FakeUpstream
from tests.helpers import csrf_token, exclusive_lock

# Every upstream call's timeout under FAST_TIMEOUTS (seconds): short, so a fault
# that stalls costs a test about a second, and long enough that a healthy call to
# the loopback fake meets it on a machine busy with the whole suite.
UPSTREAM_TIMEOUT = 1.0
# A fault's delay that every call times out before (twice the timeout).
OUTLASTS_TIMEOUT = 2 * UPSTREAM_TIMEOUT
FAST_TIMEOUTS = {
    "OPENAI_TIMEOUT": UPSTREAM_TIMEOUT,
    "AVATURN_CONNECT_TIMEOUT": UPSTREAM_TIMEOUT,
    "AVATURN_TIMEOUT": UPSTREAM_TIMEOUT,
    "OPENAI_MAX_RETRIES": 0,
    "TERMINATE_RETRIES": 0,
    "TERMINATE_RETRY_BACKOFF": 0,
}


@pytest.fixture(scope="module")
def _live_fake_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def live_fake(_live_fake_server: FakeUpstream, settings: Any) -> FakeUpstream:
    """A clean fake, with ``AVATURN`` pointed at it (the real SDK HTTP client, no mocks)."""
    _live_fake_server.reset()
    avaturn = {**settings.AVATURN, **_live_fake_server.settings(), **FAST_TIMEOUTS}
    avaturn.pop("OPENAI_HTTP_CLIENT", None)
    settings.AVATURN = avaturn
    return _live_fake_server


def live_row_ids() -> set[str]:
    return set(
        Session.objects.filter(status=SessionStatus.LIVE).values_list("session_id", flat=True)
    )


def assert_no_orphans(fake: FakeUpstream) -> None:
    """Every live upstream session has a live row, and every live row a live upstream session."""
    assert not Session.objects.filter(
        status__in=[SessionStatus.STARTING, SessionStatus.ENDING]
    ).exists(), list(Session.objects.active().values("pk", "status", "end_reason"))
    assert fake.live_session_ids() == live_row_ids()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# A burst of this many threads or more, each with its own database connection,
# runs alone on this machine (whichever test process: pytest-xdist's workers,
# another run sharing the database server), so that PostgreSQL's
# max_connections (100 by default) holds.
_MANY_THREADS = 10
_BURST_LOCK = Path(tempfile.gettempdir()) / f"django-avaturn-tests-{os.getuid()}-threads.lock"


def run_threads(target: Callable[[int], Any], count: int) -> list[Any]:
    """Run ``target(i)`` on ``count`` threads released together; return results or exceptions.

    Each thread closes its own database connection when done, as a request would.
    """
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = target(index)
        except BaseException as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    with exclusive_lock(_BURST_LOCK) if count >= _MANY_THREADS else contextlib.nullcontext():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    return results


def fail_activation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the UPDATE that turns a started row live raise, as a database outage would.

    The database is ours, not an upstream: a wrapper around the connection's
    statements is the only way to fail exactly that one (the one that sets
    ``started_at``), after Avaturn created the session.
    """

    def fail(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        started = connection.ops.quote_name("started_at")
        if sql.startswith("UPDATE") and f"{started} = %s" in sql.split(" WHERE ")[0]:
            raise DatabaseError("injected: the activating UPDATE failed")
        return execute(sql, params, many, context)

    # The thread's own connection object (the proxy would not restore the list on undo).
    wrapper = connections[DEFAULT_DB_ALIAS]
    monkeypatch.setattr(wrapper, "execute_wrappers", [*wrapper.execute_wrappers, fail])


def csrf_json(client: Any, method: str, url: str, data: Any = None, **extra: Any) -> Any:
    """Send JSON with a valid CSRF cookie and header, the way the widget does."""
    body = data if isinstance(data, (bytes, str)) or data is None else json.dumps(data)
    return getattr(client, method)(
        url,
        data=body,
        content_type=extra.pop("content_type", "application/json"),
        HTTP_X_CSRFTOKEN=csrf_token(client),
        **extra,
    )


__all__ = [
    "ACTIVE_STATUSES",
    "FAST_TIMEOUTS",
    "OUTLASTS_TIMEOUT",
    "UPSTREAM_TIMEOUT",
    "assert_no_orphans",
    "csrf_json",
    "fail_activation",
    "live_fake",
    "live_row_ids",
    "run_threads",
    "wait_until",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgres`` only make sense there: skip them on SQLite, saying why."""
    if os.environ.get("AVATURN_TEST_DATABASE_URL"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set AVATURN_TEST_DATABASE_URL")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)
