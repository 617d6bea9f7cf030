from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
from asgiref.sync import SyncToAsync
from django.db import connections

from django_avaturn.upstream.clients import reset_clients
from tests import upstreams
from tests.helpers import (
    AvaturnOverrides,
    closed_ports,
    demo_env,
    live_skip_reason,
    rundemo,
    wait_for_port,
)

pytest_plugins = ("tests.live_fake",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (pyproject.toml): two workers per core the run may use, at most eight.

    The suite mostly waits on loopback sockets, subprocesses and timeouts, so
    a core keeps two workers busy. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` sets the
    number instead (answered by xdist's own hook, which runs only when this
    one answers None); ``-n 0`` runs in one process.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, 2 * (cores or 1))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``live`` reach the real services: skipped unless asked, saying how."""
    reason = live_skip_reason(os.environ)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("live") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None) -> Iterator[None]:
    """pytest-django's, and before the test database is dropped, no thread of this process
    still holds a connection to it: PostgreSQL refuses to drop a database in use.

    The site tools' database thread closes its own once idle. The thread of asgiref's
    thread-sensitive executor, where Django's async ORM and ``sync_to_async`` run the
    async tests' queries, keeps its own open: it is closed there."""
    yield
    from django_avaturn.engine.tools import _DB_STEPS

    deadline = time.monotonic() + 10
    while _DB_STEPS.running() and time.monotonic() < deadline:
        time.sleep(0.02)
    executor = getattr(SyncToAsync, "single_thread_executor", None)
    if executor is not None:
        executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def _fresh_clients() -> Iterator[None]:
    reset_clients()
    yield
    reset_clients()


@pytest.fixture
def openai_upstream() -> Iterator[upstreams.OpenAIUpstream]:
    upstream = upstreams.OpenAIUpstream()
    upstreams.current_openai = upstream
    yield upstream
    upstreams.current_openai = upstreams.OpenAIUpstream()


@pytest.fixture
def avaturn_upstream() -> Iterator[upstreams.AvaturnUpstream]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield upstreams.AvaturnUpstream(rsps)


@pytest.fixture
def upstream(
    openai_upstream: upstreams.OpenAIUpstream, avaturn_upstream: upstreams.AvaturnUpstream
) -> Any:
    """Both upstreams answering successfully unless a test says otherwise."""

    class Both:
        openai = openai_upstream
        avaturn = avaturn_upstream

    return Both


@pytest.fixture
def avaturn(settings: Any) -> AvaturnOverrides:
    """Override ``AVATURN`` keys for one test: ``avaturn(MAX_DURATION=60)``."""
    return AvaturnOverrides(settings)


@pytest.fixture
def user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(email="ada@example.com", password="pw")


@pytest.fixture
def other_user(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user(email="bob@example.com", password="pw")


@pytest.fixture
def api_client(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A running ``rundemo``: the site's URL and its fake's URL."""
    site_port, fake_port = closed_ports(2)
    proc = rundemo(demo_env(tmp_path, fake_port), f"127.0.0.1:{site_port}")
    try:
        wait_for_port(site_port, proc)
        yield f"http://127.0.0.1:{site_port}", f"http://127.0.0.1:{fake_port}"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
