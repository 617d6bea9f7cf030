"""The start throttle holds under concurrency, on every cache the README names.

Real threads (as gunicorn's) and real database connections: 50 starts by one
user at once, at "10/minute", must let exactly 10 through, on the local-memory
cache, the database cache and Redis (skipped when none answers at
``AVATURN_TEST_REDIS_URL``; keys carry ``AVATURN_TEST_REDIS_PREFIX`` and a
fresh suffix, and expire with the rate's window: Redis is never flushed).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import caches
from django.core.management import call_command
from django.db import connection, connections
from django.test import AsyncClient

from django_avaturn.api.throttling import SessionStartThrottle
from django_avaturn.testing import AVATURN_CREATE, FakeUpstream
from tests.helpers import LIST_URL, AvaturnOverrides, redis_reachable, redis_url
from tests.live_fake import csrf_json, run_threads

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 50
CACHE_TABLE = "avaturn_test_throttle_cache"


def redis_prefix() -> str:
    base = os.environ.get("AVATURN_TEST_REDIS_PREFIX", "django-avaturn-tests")
    return f"{base}-{uuid.uuid4().hex}"


def cache_config(kind: str) -> dict[str, Any]:
    if kind == "locmem":
        return {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"throttle-{uuid.uuid4().hex}",
        }
    if kind == "database":
        return {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": CACHE_TABLE}
    return {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_url(),
        "KEY_PREFIX": redis_prefix(),
    }


@pytest.fixture(params=["locmem", "database", "redis"])
def start_cache(request: pytest.FixtureRequest, settings: Any) -> Iterator[str]:
    """The default cache, of each kind in turn, empty."""
    kind: str = request.param
    if kind == "redis" and not redis_reachable():
        pytest.skip("no Redis at AVATURN_TEST_REDIS_URL")
    settings.CACHES = {"default": cache_config(kind)}
    if kind == "database":
        call_command("createcachetable", verbosity=0)
        caches["default"].clear()  # (the table outlives a test: it is not a model's)
    yield kind
    if kind == "database":
        caches["default"].clear()
    caches["default"].close()


def request_by(pk: int) -> Any:
    user = SimpleNamespace(pk=pk, is_authenticated=True)
    return SimpleNamespace(user=user, META={"REMOTE_ADDR": "127.0.0.1"})


def allowed(pk: int) -> tuple[bool, float | None]:
    throttle = SessionStartThrottle()
    return throttle.allow_request(request_by(pk), None), throttle.wait()


def test_fifty_simultaneous_starts_at_ten_a_minute_let_exactly_ten_through(
    start_cache: str, avaturn: AvaturnOverrides
) -> None:
    avaturn(START_THROTTLE_RATE="10/minute")

    results = run_threads(lambda _: allowed(7), THREADS)

    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [ok for ok, _ in results].count(True) == 10, results
    waits = [wait for ok, wait in results if not ok]
    assert all(wait is not None and 1 <= wait <= 61 for wait in waits), waits
    # Another user's starts are theirs alone.
    assert allowed(8)[0]
    # And the first user's stay refused for the rest of the window.
    ok, wait = allowed(7)
    assert not ok and wait is not None and wait > 50


def test_a_window_admits_the_rate_again_once_it_has_passed(
    start_cache: str, avaturn: AvaturnOverrides
) -> None:
    """A slot taken at t is free again from t + D (plus the second caches may round away)."""
    avaturn(START_THROTTLE_RATE="2/second")
    assert [allowed(9)[0] for _ in range(3)] == [True, True, False]
    time.sleep(2.1)
    assert [allowed(9)[0] for _ in range(3)] == [True, True, False]


def test_slots_whose_window_passed_are_taken_again_once_each_on_the_database_cache(
    settings: Any,
    avaturn: AvaturnOverrides,
) -> None:
    """Expired slots stay in the cache table until culled.

    Django's ``add`` reads such a row, then updates it: on PostgreSQL two adds
    that both read it expired both update it, and both win. And its ``get``
    deletes expired rows it read, perhaps after another request took the slot
    afresh. Neither may let more than the rate through.
    """
    settings.CACHES = {"default": cache_config("database")}
    call_command("createcachetable", verbosity=0)
    cache = caches["default"]
    cache.clear()
    avaturn(START_THROTTLE_RATE="5/minute")
    try:
        assert [allowed(11)[0] for _ in range(6)] == [True] * 5 + [False]
        with connection.cursor() as cursor:  # their window passed long ago
            cursor.execute(f"UPDATE {CACHE_TABLE} SET expires = %s", ["2000-01-01 00:00:00"])

        results = run_threads(lambda _: allowed(11), THREADS)

        assert not [r for r in results if isinstance(r, BaseException)], results
        assert [ok for ok, _ in results].count(True) == 5, results
    finally:
        cache.clear()


_BURST_SCRIPT = """
import sys
import time
from types import SimpleNamespace

import django

django.setup()
from django_avaturn.api.throttling import SessionStartThrottle

user_pk, tries, at = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
request = SimpleNamespace(user=SimpleNamespace(pk=user_pk, is_authenticated=True), META={})
time.sleep(max(0.0, at - time.time()))  # every process fires at once
print(sum(SessionStartThrottle().allow_request(request, None) for _ in range(tries)))
"""


@pytest.mark.skipif(not redis_reachable(), reason="no Redis at AVATURN_TEST_REDIS_URL")
def test_processes_starting_at_once_share_the_rate_through_redis() -> None:
    """As gunicorn's or uvicorn's worker processes: 6 processes, 5 starts each, at 10/minute."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
        "AVATURN_TEST_REDIS_URL": redis_url(),
        "AVATURN_TEST_REDIS_PREFIX": redis_prefix(),
        "AVATURN_TEST_THROTTLE_RATE": "10/minute",
    }
    at = time.time() + 4  # after every process has set Django up
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _BURST_SCRIPT, "4343", "5", str(at)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for _ in range(6)
    ]
    counts = [int(process.communicate(timeout=60)[0]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert sum(counts) == 10, counts


def test_simultaneous_starts_through_the_api_answer_json_429_with_retry_after(
    live_fake: FakeUpstream, settings: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    """On the database cache: the one every site has."""
    from rest_framework.test import APIClient

    settings.CACHES = {"default": cache_config("database")}
    call_command("createcachetable", verbosity=0)
    caches["default"].clear()

    avaturn(
        START_THROTTLE_RATE="10/minute",
        MAX_LIVE_SESSIONS_PER_USER=50,
        AVATURN_CONNECT_TIMEOUT=10,
        AVATURN_TIMEOUT=10,
        OPENAI_TIMEOUT=10,
    )

    def start(_: int) -> Any:
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user)
        return csrf_json(client, "post", LIST_URL, {})

    responses = run_threads(start, THREADS)

    assert not [r for r in responses if isinstance(r, BaseException)], responses
    assert sorted(r.status_code for r in responses) == [201] * 10 + [429] * 40
    throttled = [r for r in responses if r.status_code == 429]
    assert {r.json()["code"] for r in throttled} == {"throttled"}
    assert all(1 <= int(r["Retry-After"]) <= 61 for r in throttled)
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 10
    caches["default"].clear()


@pytest.fixture
def fresh_locmem(settings: Any) -> Iterator[None]:
    settings.CACHES = {"default": cache_config("locmem")}
    yield
    caches["default"].close()


def test_simultaneous_starts_through_the_asgi_handler_let_exactly_ten_through(
    live_fake: FakeUpstream, fresh_locmem: None, avaturn: AvaturnOverrides, user: Any
) -> None:
    """As under uvicorn: the sync view runs on the handler's thread, requests interleave."""
    avaturn(START_THROTTLE_RATE="10/minute", MAX_LIVE_SESSIONS_PER_USER=50)
    client = AsyncClient()
    client.force_login(user)

    async def burst() -> list[Any]:
        try:
            return await asyncio.gather(
                *(
                    client.post(LIST_URL, {}, content_type="application/json")
                    for _ in range(THREADS)
                )
            )
        finally:
            # The handler's thread for sync code keeps its own connection.
            await sync_to_async(connections.close_all)()

    # On a thread of its own: the browser tests' Playwright keeps an event loop
    # running on this one for the whole session.
    with ThreadPoolExecutor(max_workers=1) as pool:
        responses = pool.submit(asyncio.run, burst()).result()

    assert sorted(r.status_code for r in responses) == [201] * 10 + [429] * 40
    throttled = [r for r in responses if r.status_code == 429]
    assert {r.json()["code"] for r in throttled} == {"throttled"}
    assert all(int(r["Retry-After"]) >= 1 for r in throttled)


def test_a_start_refused_for_its_body_spends_none_of_the_rate(
    live_fake: FakeUpstream, fresh_locmem: None, avaturn: AvaturnOverrides, user: Any
) -> None:
    """The rate counts starts: a body refused before anything starts (400, 415) is not one."""
    from rest_framework.test import APIClient

    avaturn(START_THROTTLE_RATE="2/minute", MAX_LIVE_SESSIONS_PER_USER=5, ALLOWED_AVATARS=["av-1"])
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    refused = [
        csrf_json(client, "post", LIST_URL, {"instructions": "x"}),
        csrf_json(client, "post", LIST_URL, {"client_ref": 5}),
        csrf_json(client, "post", LIST_URL, {"avatar_id": "not-allowed"}),
        csrf_json(client, "post", LIST_URL, "{not json", content_type="application/json"),
        csrf_json(client, "post", LIST_URL, "a=b", content_type="text/plain"),
    ]
    started = [csrf_json(client, "post", LIST_URL, {}).status_code for _ in range(3)]

    assert [(r.status_code, r.json()["code"]) for r in refused] == [
        (400, "invalid"),
        (400, "invalid"),
        (400, "invalid"),
        (400, "parse_error"),
        (415, "unsupported_media_type"),
    ]
    assert started == [201, 201, 429]
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 2
