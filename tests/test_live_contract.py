"""What the code and the loopback fake assume about the real Avaturn and OpenAI.

Each test states one assumption and checks it twice: against the fake
(``[fake]``, always, so the fake is proven to honour it) and against the real
services (``[live]``, marked ``live``: skipped unless ``AVATURN_LIVE_TESTS=1``,
``AVATURN_API_KEY`` and ``OPENAI_API_KEY`` are set). A live test costs one
client secret and at most one session of the shortest length Avaturn allows,
which it ends itself (``DELETE`` in a ``finally``).

The bodies sent are the ones the app builds (``build_plan``), with the
shortest durations; the requests go over plain ``requests`` so that each
assertion names the wire field it relies on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from django_avaturn.conf import DEFAULTS
from django_avaturn.sessions.plan import SessionPlan, build_plan
from django_avaturn.testing import FakeUpstream
from tests.helpers import AvaturnOverrides

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
TIMEOUT = 30
# The shortest session Avaturn takes, and the soonest it ends one nobody joined.
SHORTEST = {"MAX_DURATION": 60, "USER_ABSENT_TIMEOUT": 10, "CLIENT_SECRET_TTL": 60}
RENDER_MODEL = "delta"
# The field Avaturn takes the render model under: the default, unless a live
# run is told to try the other one the setting allows.
RENDER_MODEL_FIELD: str = (
    os.environ.get("AVATURN_LIVE_RENDER_MODEL_FIELD") or DEFAULTS["RENDER_MODEL_FIELD"]
)


@dataclass(frozen=True)
class Upstreams:
    """Where the two services are, and the keys for them."""

    avaturn_url: str
    avaturn_key: str
    openai_base_url: str
    openai_key: str

    @property
    def sdk_api_host(self) -> str:
        # What the widget hands the browser SDK as apiHost by default (SDK_API_HOST unset).
        return self.avaturn_url


@pytest.fixture(scope="module", params=["fake", pytest.param("live", marks=pytest.mark.live)])
def upstreams(request: pytest.FixtureRequest) -> Iterator[Upstreams]:
    if request.param == "live":
        yield Upstreams(
            avaturn_url=os.environ.get("AVATURN_API_URL") or DEFAULTS["API_URL"],
            avaturn_key=os.environ["AVATURN_API_KEY"],
            openai_base_url=os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL,
            openai_key=os.environ["OPENAI_API_KEY"],
        )
        return
    with FakeUpstream() as fake:
        yield Upstreams(
            avaturn_url=fake.avaturn_url,
            avaturn_key=fake.avaturn_api_key,
            openai_base_url=fake.openai_base_url,
            openai_key=fake.openai_api_key,
        )


@pytest.fixture
def plan(avaturn: AvaturnOverrides) -> SessionPlan:
    """What the app would send, with the shortest durations and a render model."""
    avaturn(**SHORTEST, RENDER_MODEL=RENDER_MODEL, RENDER_MODEL_FIELD=RENDER_MODEL_FIELD)
    return build_plan()


def mint(upstreams: Upstreams, plan: SessionPlan) -> requests.Response:
    return requests.post(
        f"{upstreams.openai_base_url.rstrip('/')}/realtime/client_secrets",
        json={
            "expires_after": {"anchor": "created_at", "seconds": plan.client_secret_ttl},
            "session": plan.realtime_session,
        },
        headers={"Authorization": f"Bearer {upstreams.openai_key}"},
        timeout=TIMEOUT,
    )


def create(upstreams: Upstreams, payload: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{upstreams.avaturn_url.rstrip('/')}/api/v1/sessions",
        json=payload,
        headers=_avaturn_headers(upstreams),
        timeout=TIMEOUT,
    )


def terminate(upstreams: Upstreams, session_id: str) -> requests.Response:
    return requests.delete(
        f"{upstreams.avaturn_url.rstrip('/')}/api/v1/sessions/{session_id}",
        headers=_avaturn_headers(upstreams),
        timeout=TIMEOUT,
    )


def _avaturn_headers(upstreams: Upstreams) -> dict[str, str]:
    return {"Authorization": f"Bearer {upstreams.avaturn_key}", "Accept": "application/json"}


@pytest.fixture
def session(upstreams: Upstreams, plan: SessionPlan) -> Iterator[dict[str, Any]]:
    """One session created as the app creates it; ended after the test whatever happened."""
    secret = mint(upstreams, plan)
    assert secret.status_code == 200, secret.text[:300]
    created = create(upstreams, plan.avaturn_payload(secret.json()["value"]))
    answer = created.json() if created.ok else {}
    try:
        yield {"status": created.status_code, "text": created.text[:300], **answer}
    finally:
        if isinstance(answer.get("session_id"), str):
            terminate(upstreams, answer["session_id"])


def test_openai_client_secret_has_a_value_and_expires_at_in_seconds(
    upstreams: Upstreams, plan: SessionPlan
) -> None:
    # openai_client.RealtimeSecrets reads `value` and `expires_at`, a Unix time
    # in seconds (it refuses milliseconds): the fake answers the same.
    before = time.time()
    answer = mint(upstreams, plan)
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert isinstance(body["value"], str) and body["value"]
    assert isinstance(body["expires_at"], int)
    # The TTL asked for, give or take a few minutes of clock skew: seconds, not ms.
    assert before - 300 < body["expires_at"] <= time.time() + plan.client_secret_ttl + 300


def test_avaturn_create_takes_the_render_model_field_and_answers_session_id_and_token(
    session: dict[str, Any], plan: SessionPlan
) -> None:
    # session_config puts RENDER_MODEL under RENDER_MODEL_FIELD ("model" by default);
    # avaturn_client.create_session needs `session_id` and `token` in a 2xx answer.
    assert plan.avaturn_options[RENDER_MODEL_FIELD] == RENDER_MODEL
    assert 200 <= session["status"] < 300, session["text"]
    assert isinstance(session["session_id"], str) and session["session_id"]
    assert isinstance(session["token"], str) and session["token"]


def test_avaturn_delete_answers_2xx_then_404_or_2xx_for_a_session_already_gone(
    upstreams: Upstreams, session: dict[str, Any]
) -> None:
    # avaturn_client.terminate_session: a 2xx ended it, a 404 means "already
    # gone" (True / False); anything else is a failure, retried if 5xx.
    assert 200 <= session["status"] < 300, session["text"]
    first = terminate(upstreams, session["session_id"])
    assert 200 <= first.status_code < 300, first.text[:300]
    again = terminate(upstreams, session["session_id"])
    assert again.status_code == 404 or 200 <= again.status_code < 300, again.text[:300]


def test_the_sdk_session_endpoint_takes_the_token_and_names_the_session_and_its_room(
    upstreams: Upstreams, session: dict[str, Any]
) -> None:
    # The browser SDK calls GET {apiHost}/_sdk/v0/sessions with X-Session-Token
    # (the token our API hands the widget); the fake's stand-in SDK relies on
    # the same `id` and `room_url`.
    assert 200 <= session["status"] < 300, session["text"]
    answer = requests.get(
        f"{upstreams.sdk_api_host.rstrip('/')}/_sdk/v0/sessions",
        headers={"X-Session-Token": session["token"], "Accept": "application/json"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text[:300]
    body = answer.json()
    assert body["id"] == session["session_id"]
    assert isinstance(body["room_url"], str) and body["room_url"].startswith("http")


def test_the_sdk_session_endpoint_refuses_a_wrong_token(upstreams: Upstreams) -> None:
    # What the widget reports as a refused token: a 4xx, not a session.
    answer = requests.get(
        f"{upstreams.sdk_api_host.rstrip('/')}/_sdk/v0/sessions",
        headers={"X-Session-Token": "not-a-session-token", "Accept": "application/json"},
        timeout=TIMEOUT,
    )
    assert 400 <= answer.status_code < 500
