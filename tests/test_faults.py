"""The fault matrix: every failure of either upstream, at every step, over real HTTP.

Steps: minting the OpenAI client secret, creating the Avaturn session,
terminating it when the visitor ends it, and terminating a replaced session
while a new one starts; plus a database error after Avaturn created a session.
Each case checks our documented answer (502 ``upstream_error``, 504
``upstream_timeout``, 503 ``unavailable``) and that no upstream session runs
without a live row, nor a live row without an upstream session.

Three create faults are ambiguous by nature: Avaturn did the work but its
answer never reached us whole (a timeout, a slow drip past our deadline, an
answer without ``session_id``). Avaturn has no endpoint to list sessions and
no documented idempotency key, so nobody can find that session again; it is
bounded by the ``user_absent_timeout`` and ``max_duration`` every create
carries (no browser ever joins it). Those cases assert exactly that bound.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from rest_framework.test import APIClient

from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TERMINATE,
    CARTESIA_ACCESS_TOKEN,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from tests.helpers import LIST_URL, AvaturnOverrides, closed_port
from tests.live_fake import (
    OUTLASTS_TIMEOUT,
    UPSTREAM_TIMEOUT,
    assert_no_orphans,
    csrf_json,
    fail_activation,
    live_row_ids,
)

pytestmark = pytest.mark.django_db(transaction=True)


# name -> how to inject it on the fake: (mode, status)
FAULTS: dict[str, tuple[str, int]] = {
    "refused": ("refused", 0),
    "timeout": ("timeout", 200),
    "401": ("status", 401),
    "403": ("status", 403),
    "404": ("status", 404),
    "409": ("status", 409),
    "422": ("status", 422),
    "429": ("status", 429),
    "500": ("status", 500),
    "503": ("status", 503),
    "malformed": ("malformed", 200),
    "missing_fields": ("missing_fields", 200),
    "drip": ("drip", 200),
    # One byte of the body every OUTLASTS_TIMEOUT: a single read outlasts the read timeout.
    "stall": ("drip", 200),
}
STEPS = ("mint", "create", "terminate_on_end", "terminate_replaced")
CASES = [(step, fault) for step in STEPS for fault in FAULTS] + [("activate", "database_error")]
ROUTES = {
    "mint": OPENAI_CLIENT_SECRET,
    "create": AVATURN_CREATE,
    "terminate_on_end": AVATURN_TERMINATE,
    "terminate_replaced": AVATURN_TERMINATE,
}
TIMEOUTS = {"timeout", "drip", "stall"}
# Create faults after which Avaturn holds a session nobody can name (see the docstring).
AMBIGUOUS_CREATES = {"timeout", "drip", "stall", "missing_fields"}
# Create faults whose outcome the start cannot know (a 5xx may come after the
# create): its row holds the user's slot until any such session has ended.
HELD_CREATES = AMBIGUOUS_CREATES | {"500", "503"}


@pytest.fixture
def client(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def _inject(fake: FakeUpstream, settings: Any, step: str, fault: str) -> None:
    mode, status = FAULTS[fault]
    route = ROUTES[step]
    if mode == "refused":
        url = f"http://127.0.0.1:{closed_port()}"
        name, value = ("OPENAI_BASE_URL", f"{url}/v1") if step == "mint" else ("API_URL", url)
        settings.AVATURN = {**settings.AVATURN, name: value}
    elif fault == "404" and route == AVATURN_TERMINATE:
        # A 404 on DELETE means "already gone": make it true rather than pretend.
        for session_id in fake.live_session_ids():
            fake.end_session(session_id)
    elif mode == "timeout":
        fake.fail(route, mode=mode, delay=OUTLASTS_TIMEOUT)
    elif fault == "drip":
        # A byte every tenth of the timeout: each read is well inside it, the whole is not.
        fake.fail(route, mode=mode, delay=UPSTREAM_TIMEOUT / 10)
    elif fault == "stall":
        fake.fail(route, mode=mode, delay=OUTLASTS_TIMEOUT)
    else:
        fake.fail(route, mode=mode, status=status)


def _expected(step: str, fault: str) -> tuple[int, str | None]:
    """The status and error code the API answers."""
    if step == "activate":
        return 503, "unavailable"
    if step.startswith("terminate") and fault in (
        "404",
        "malformed",
        "missing_fields",
        "drip",
        "stall",
    ):
        # Terminated (or already gone): a DELETE's answer body does not matter.
        return (204, None) if step == "terminate_on_end" else (201, None)
    if fault in TIMEOUTS:
        return 504, "upstream_timeout"
    return 502, "upstream_error"


@pytest.mark.parametrize(
    ("step", "fault"), CASES, ids=[f"{len(CASES)}cases-{step}-{fault}" for step, fault in CASES]
)
def test_fault_matrix_57_cases(
    live_fake: FakeUpstream,
    settings: Any,
    client: APIClient,
    user: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    step: str,
    fault: str,
    avaturn: AvaturnOverrides,
) -> None:
    assert len(CASES) == 57
    caplog.set_level(logging.DEBUG)
    avaturn(ON_SESSION_LIMIT="end_oldest")
    first: Session | None = None
    if step.startswith("terminate"):
        response = csrf_json(client, "post", LIST_URL, {})
        assert response.status_code == 201, response.content
        first = Session.objects.get(session_id=response.json()["session_id"])

    if step == "activate":
        fail_activation(monkeypatch)
    else:
        _inject(live_fake, settings, step, fault)

    if step == "terminate_on_end":
        assert first is not None
        response = csrf_json(client, "delete", f"{LIST_URL}{first.session_id}/")
    else:
        response = csrf_json(client, "post", LIST_URL, {})

    status, code = _expected(step, fault)
    assert response.status_code == status, response.content
    if code is not None:
        assert response.json()["code"] == code
        assert response["Content-Type"] == "application/json"
    monkeypatch.undo()
    avaturn(**live_fake.settings())

    if step == "create" and fault in AMBIGUOUS_CREATES:
        _assert_bounded_orphan(live_fake)
        return
    if step == "create" and fault in HELD_CREATES:
        # Avaturn answered the 5xx without creating, but the start cannot know.
        _assert_held()
        assert live_fake.live_session_ids() == set()
        return
    if step.startswith("terminate") and fault in ("timeout",):
        # Avaturn ended it but the answer was lost: the row stays live so that a
        # retry (the visitor's, staff's or the expiry command's) finishes the job.
        assert first is not None
        first.refresh_from_db()
        assert first.status == SessionStatus.LIVE
        retry = csrf_json(client, "delete", f"{LIST_URL}{first.session_id}/")
        assert retry.status_code == 204
        first.refresh_from_db()
        assert first.status == SessionStatus.ENDED
    assert_no_orphans(live_fake)
    if step == "terminate_replaced" and status >= 500:
        # The failed replacement put the old session back; it still runs and is recorded.
        assert first is not None
        first.refresh_from_db()
        if fault != "timeout":
            assert live_row_ids() == {first.session_id}
    if step == "activate":
        row = Session.objects.get()
        assert row.status == SessionStatus.FAILED
        assert row.session_id is not None  # staff can see what was created and terminated
        assert len(live_fake.requests_for(AVATURN_TERMINATE)) == 1


def _assert_bounded_orphan(fake: FakeUpstream) -> None:
    """The one session nobody can name: it carries the bounds that end it by itself."""
    orphans = fake.live_session_ids() - live_row_ids()
    assert len(orphans) == 1
    body = fake.sessions[next(iter(orphans))].body
    assert body["user_absent_timeout"] >= 10
    assert body["max_duration"] >= 60
    _assert_held()


def _assert_held() -> None:
    """The failed start's row holds its slot (ending, nothing to terminate) for the expiry run."""
    row = Session.objects.get()
    assert (row.status, row.end_reason, row.session_id, row.awaiting_retry) == (
        SessionStatus.ENDING,
        EndReason.UPSTREAM_ERROR,
        None,
        False,
    )


def test_a_create_answered_5xx_after_creating_is_logged_as_a_possible_orphan(
    live_fake: FakeUpstream, client: APIClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Avaturn created the session, then failed to answer: nobody can name it.
    live_fake.fail(AVATURN_CREATE, mode="create_then_status", status=502)
    response = csrf_json(client, "post", LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (502, "upstream_error")
    _assert_bounded_orphan(live_fake)
    (record,) = [
        r for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("django_av")
    ]
    assert "a session may be running that cannot be terminated" in record.getMessage()
    assert "a 502 answer" in record.getMessage()


@pytest.mark.parametrize(("hang_up", "logged"), [(True, True), (False, False)])
def test_a_create_whose_connection_dropped_after_sending_is_a_possible_orphan(
    live_fake: FakeUpstream,
    client: APIClient,
    avaturn: AvaturnOverrides,
    caplog: pytest.LogCaptureFixture,
    hang_up: bool,
    logged: bool,
) -> None:
    # Hung up on after the request went out, Avaturn may have created the
    # session; refused at connect, it cannot have.
    if hang_up:
        live_fake.fail(AVATURN_CREATE, mode="close")
    else:
        avaturn(API_URL=f"http://127.0.0.1:{closed_port()}")
    response = csrf_json(client, "post", LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (502, "upstream_error")
    warned = [
        r
        for r in caplog.records
        if "a session may be running that cannot be terminated" in r.getMessage()
    ]
    assert bool(warned) is logged


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_cartesia_token_fault_after_the_reservation_spends_nothing_at_avaturn(
    live_fake: FakeUpstream, client: APIClient, avaturn: AvaturnOverrides, fault: str
) -> None:
    # The Cartesia engine's credential step: a token minted after the slot was reserved.
    cartesia = {**live_fake.cartesia_settings(), "AGENT_ID": "agent_abc"}
    mode, status = FAULTS[fault]
    if mode == "refused":
        cartesia["API_URL"] = f"http://127.0.0.1:{closed_port()}"
    elif mode == "timeout":
        live_fake.fail(CARTESIA_ACCESS_TOKEN, mode=mode, delay=OUTLASTS_TIMEOUT)
    elif mode == "drip":
        delay = UPSTREAM_TIMEOUT / 10 if fault == "drip" else OUTLASTS_TIMEOUT
        live_fake.fail(CARTESIA_ACCESS_TOKEN, mode=mode, delay=delay)
    else:
        live_fake.fail(CARTESIA_ACCESS_TOKEN, mode=mode, status=status)
    avaturn(ENGINE="cartesia", CARTESIA=cartesia)

    response = csrf_json(client, "post", LIST_URL, {})

    expected = (504, "upstream_timeout") if fault in TIMEOUTS else (502, "upstream_error")
    assert (response.status_code, response.json()["code"]) == expected, response.content
    row = Session.objects.get()
    assert (row.engine, row.status, row.end_reason) == (
        "cartesia",
        SessionStatus.FAILED,
        EndReason.UPSTREAM_ERROR,
    )
    assert "cartesia" in row.end_detail
    assert live_fake.requests_for(AVATURN_CREATE) == []  # nothing spent at Avaturn
    assert_no_orphans(live_fake)
