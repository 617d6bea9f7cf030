"""A site whose router puts everything on a database other than ``default``.

Every transaction of the sessions runs on the database they are written to:
a refusal rolls back the reservation's row there, a bulk end locks its rows
there, and the API's views stay out of that database's ``ATOMIC_REQUESTS``.
Nothing reaches ``default``: not a statement, not a ``BEGIN``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.handlers.base import BaseHandler
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.urls import resolve, reverse
from rest_framework.test import APIClient

from django_avaturn import services
from django_avaturn.models import EndReason, Session, SessionStatus, TranscriptRole
from django_avaturn.sessions import transcripts
from django_avaturn.spend import limits
from tests.helpers import LIST_URL, AvaturnOverrides, csrf_post, live

on_both_databases = pytest.mark.django_db(transaction=True, databases=["default", "other"])


@contextmanager
def nothing_on_default() -> Iterator[None]:
    with CaptureQueriesContext(connections["default"]) as captured:
        yield
    assert [query["sql"] for query in captured.captured_queries] == []


@pytest.fixture
def member(settings: Any, django_user_model: Any) -> Any:
    """A signed-up user of a site whose every model is on ``other``."""
    settings.DATABASE_ROUTERS = ["tests.routers.EverythingOnOther"]
    user = django_user_model.objects.create_user(email="ada@example.com", password="pw")
    assert user._state.db == "other"
    return user


def _client(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _rows(alias: str) -> list[tuple[str, str | None]]:
    return list(Session.objects.using(alias).order_by("pk").values_list("status", "session_id"))


@on_both_databases
def test_a_session_starts_and_ends_on_the_sites_database(member: Any, upstream: Any) -> None:
    client = _client(member)

    with nothing_on_default():
        started = csrf_post(client, LIST_URL, {})
    assert started.status_code == 201, started.content
    session_id = started.json()["session_id"]
    assert _rows("other") == [(SessionStatus.LIVE, session_id)]

    with nothing_on_default():
        transcripts.store_line(
            Session.objects.get(), role=TranscriptRole.USER, text="Hello", spoken_at=None
        )
        ended = client.delete(
            f"{LIST_URL}{session_id}/", HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value
        )
    assert ended.status_code == 204, ended.content
    assert _rows("other") == [(SessionStatus.ENDED, session_id)]
    assert _rows("default") == []


@on_both_databases
def test_a_refused_start_leaves_no_row_behind(
    member: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    """The reservation's transaction is the sessions' database's: its refusal rolls it back."""
    avaturn(MAX_LIVE_SESSIONS_PER_USER=1, ON_SESSION_LIMIT="refuse")
    live(member, "running")

    client = _client(member)

    with nothing_on_default():
        refused = csrf_post(client, LIST_URL, {})

    assert refused.status_code == 409, refused.content
    assert refused.json()["code"] == "session_limit_reached"
    assert _rows("other") == [(SessionStatus.LIVE, "running")]


@on_both_databases
def test_a_start_is_refused_while_the_kill_switch_is_off(member: Any, upstream: Any) -> None:
    client = _client(member)

    with nothing_on_default():
        limits.set_sessions_enabled(False, reason="maintenance")
        refused = csrf_post(client, LIST_URL, {})

    assert refused.status_code == 503, refused.content
    assert _rows("other") == []


@on_both_databases
def test_ending_sessions_in_bulk_claims_them_on_the_sites_database(
    member: Any, upstream: Any
) -> None:
    """A bulk end locks its rows (PostgreSQL): in a transaction of the database they are on."""
    live(member, "first")
    live(member, "second")

    with nothing_on_default():
        services.end_sessions(Session.objects.all(), reason=EndReason.ADMIN)

    assert sorted(_rows("other")) == [
        (SessionStatus.ENDED, "first"),
        (SessionStatus.ENDED, "second"),
    ]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("django_avaturn:session-list", []),
        ("django_avaturn:session-detail", ["some-id"]),
        ("django_avaturn:session-abandon", []),
        ("admin:django_avaturn_session_terminate", [1]),
        ("admin:django_avaturn_session_kill_switch", []),
    ],
)
def test_what_calls_the_upstreams_stays_out_of_every_databases_request_transaction(
    monkeypatch: pytest.MonkeyPatch, name: str, args: list[Any]
) -> None:
    """No transaction (nor its locks) is held open across a start's or an end's upstream calls."""
    for connection in connections.all():
        monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    view = resolve(reverse(name, args=args)).func

    assert BaseHandler().make_view_atomic(view) is view
