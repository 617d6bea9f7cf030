"""The loopback fake upstream, exercised over real HTTP with `requests` and the real openai SDK."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TASK,
    AVATURN_TERMINATE,
    DAILY_ROOM,
    DEFAULT_CARTESIA_API_KEY,
    OPENAI_CLIENT_SECRET,
    SDK_PREFLIGHT,
    SDK_SESSION,
    UNKNOWN,
    FakeUpstream,
)
from django_avaturn.testing.__main__ import build_fake, build_parser, main
from tests.live_fake import wait_until

SESSION_CONFIG = {
    "type": "realtime",
    "model": "gpt-realtime",
    "instructions": "Be brief.",
    "audio": {"output": {"voice": "marin"}},
}


@pytest.fixture(scope="module")
def running_fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(running_fake: FakeUpstream) -> FakeUpstream:
    running_fake.reset()
    return running_fake


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def oai(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        api_key=fake.openai_api_key, base_url=fake.openai_base_url, max_retries=0, timeout=5
    )
    yield client
    client.close()


def av_headers(fake: FakeUpstream) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.avaturn_api_key}"}


def issue_secret(fake: FakeUpstream, http: requests.Session, seconds: int = 600) -> str:
    answer = http.post(
        f"{fake.openai_base_url}/realtime/client_secrets",
        json={
            "expires_after": {"anchor": "created_at", "seconds": seconds},
            "session": SESSION_CONFIG,
        },
        headers={"Authorization": f"Bearer {fake.openai_api_key}"},
        timeout=5,
    )
    assert answer.status_code == 200
    value: str = answer.json()["value"]
    return value


def create_body(secret: str, **extra: Any) -> dict[str, Any]:
    return {"conversation_engine": {"type": "openai-realtime", "client_secret": secret}, **extra}


def create(fake: FakeUpstream, http: requests.Session, **extra: Any) -> requests.Response:
    return http.post(
        f"{fake.url}/api/v1/sessions",
        json=create_body(issue_secret(fake, http), **extra),
        headers=av_headers(fake),
        timeout=5,
    )


def live_session(fake: FakeUpstream, http: requests.Session) -> dict[str, str]:
    answer = create(fake, http)
    assert answer.status_code == 201
    body: dict[str, str] = answer.json()
    return body


# -- OpenAI client secrets ------------------------------------------------------------------


def test_client_secret_parses_with_the_real_openai_sdk(
    fake: FakeUpstream, oai: openai.OpenAI
) -> None:
    before = int(time.time())
    secret = oai.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120}, session=SESSION_CONFIG
    )
    assert type(secret).__name__ == "ClientSecretCreateResponse"
    assert secret.value.startswith("ek_fake_")
    assert before + 120 <= secret.expires_at <= int(time.time()) + 120
    session: Any = secret.session
    assert type(session).__name__ == "RealtimeSessionCreateResponse"
    assert session.type == "realtime"
    assert session.id.startswith("sess_fake_")
    assert session.model == "gpt-realtime"
    assert session.instructions == "Be brief."
    assert session.audio.output.voice == "marin"
    issued = fake.secrets_issued[secret.value]
    assert issued.expires_at == secret.expires_at
    assert fake.requests_for(OPENAI_CLIENT_SECRET)[0].json["session"] == SESSION_CONFIG


def test_client_secret_defaults_to_600_seconds(fake: FakeUpstream, http: requests.Session) -> None:
    answer = http.post(
        f"{fake.openai_base_url}/realtime/client_secrets",
        json={"session": {"type": "realtime"}},
        headers={"Authorization": f"Bearer {fake.openai_api_key}"},
    )
    body = answer.json()
    assert answer.status_code == 200
    assert body["expires_at"] - int(time.time()) in range(598, 601)
    assert body["session"]["audio"]["output"]["voice"] == "alloy"


def test_client_secret_wrong_key_is_401_without_echoing_the_key(fake: FakeUpstream) -> None:
    client = openai.OpenAI(
        api_key="sk-wrong-key-1234", base_url=fake.openai_base_url, max_retries=0
    )
    with client, pytest.raises(openai.AuthenticationError) as caught:
        client.realtime.client_secrets.create(session={"type": "realtime"})
    raw = caught.value.response.text
    assert json.loads(raw)["error"]["code"] == "invalid_api_key"
    assert "sk-wrong" not in raw
    assert "1234" not in raw
    assert fake.secrets_issued == {}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"session": {"model": "gpt-realtime"}}, "session.type"),  # the old beta shape
        ({"session": {"type": "transcription"}}, "session.type"),
        ({}, "session.type"),
        (
            {"session": {"type": "realtime"}, "expires_after": {"seconds": 9}},
            "expires_after.seconds",
        ),
        (
            {"session": {"type": "realtime"}, "expires_after": {"seconds": 7201}},
            "expires_after.seconds",
        ),
        (
            {"session": {"type": "realtime"}, "expires_after": {"seconds": "600"}},
            "expires_after.seconds",
        ),
        (
            {"session": {"type": "realtime"}, "expires_after": {"anchor": "now", "seconds": 60}},
            "expires_after.anchor",
        ),
    ],
)
def test_client_secret_validates_the_ga_shape(
    fake: FakeUpstream, http: requests.Session, payload: dict[str, Any], param: str
) -> None:
    answer = http.post(
        f"{fake.openai_base_url}/realtime/client_secrets",
        json=payload,
        headers={"Authorization": f"Bearer {fake.openai_api_key}"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param
    assert fake.secrets_issued == {}


def test_client_secret_bounds_are_inclusive(fake: FakeUpstream, http: requests.Session) -> None:
    for seconds in (10, 7200):
        issue_secret(fake, http, seconds=seconds)
    assert len(fake.secrets_issued) == 2


# -- Avaturn sessions -----------------------------------------------------------------------


def test_create_answers_201_and_records_a_live_session(
    fake: FakeUpstream, http: requests.Session
) -> None:
    secret = issue_secret(fake, http)
    answer = http.post(
        f"{fake.url}/api/v1/sessions",
        json=create_body(secret, avatar_id="anna", max_duration=60, user_absent_timeout=10),
        headers=av_headers(fake),
    )
    assert answer.status_code == 201
    body = answer.json()
    assert set(body) == {"session_id", "token"}
    assert body["session_id"].startswith("fake-sess-")
    assert body["token"].startswith("fake-tok-")
    session = fake.sessions[body["session_id"]]
    assert session.live
    assert session.token == body["token"]
    assert session.client_secret == secret
    assert session.avatar_id == "anna"
    assert session.body["max_duration"] == 60
    assert fake.live_session_ids() == {body["session_id"]}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "x"}])
def test_avaturn_routes_need_the_avaturn_key(
    fake: FakeUpstream, http: requests.Session, headers: dict[str, str]
) -> None:
    sid = live_session(fake, http)["session_id"]
    secret = issue_secret(fake, http)
    url = f"{fake.url}/api/v1/sessions"
    assert http.post(url, json=create_body(secret), headers=headers).status_code == 401
    assert http.delete(f"{url}/{sid}", headers=headers).status_code == 401
    assert http.post(f"{url}/{sid}/tasks", json={"text": "hi"}, headers=headers).status_code == 401
    assert fake.live_session_ids() == {sid}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"conversation_engine": {"type": "text-echo"}},
        {"conversation_engine": {"type": "openai-realtime"}},
        {"conversation_engine": {"type": "openai-realtime", "client_secret": "ek_not_issued"}},
        "SECRET|max_duration=59",
        "SECRET|max_duration=86401",
        "SECRET|max_duration=true",
        "SECRET|user_absent_timeout=9",
        "SECRET|avatar_id=7",
        [1, 2],
    ],
)
def test_create_rejects_invalid_bodies_with_422(
    fake: FakeUpstream, http: requests.Session, body: Any
) -> None:
    if isinstance(body, str):
        name, _, value = body.split("|")[1].partition("=")
        body = create_body(issue_secret(fake, http), **{name: json.loads(value)})
    answer = http.post(f"{fake.url}/api/v1/sessions", json=body, headers=av_headers(fake))
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], str)
    assert fake.sessions == {}


def test_create_rejects_unparseable_json(fake: FakeUpstream, http: requests.Session) -> None:
    answer = http.post(
        f"{fake.url}/api/v1/sessions",
        data=b"{not json",
        headers={**av_headers(fake), "Content-Type": "application/json"},
    )
    assert answer.status_code == 422


def test_create_rejects_an_expired_secret() -> None:
    now = [1_000_000.0]
    with FakeUpstream(clock=lambda: now[0]) as fake, requests.Session() as http:
        secret = issue_secret(fake, http, seconds=10)
        now[0] += 10
        answer = http.post(
            f"{fake.url}/api/v1/sessions", json=create_body(secret), headers=av_headers(fake)
        )
        assert answer.status_code == 422
        assert "client_secret" in answer.json()["detail"]


def test_create_for_a_gone_avatar_is_410(fake: FakeUpstream, http: requests.Session) -> None:
    fake.gone_avatars.add("retired")
    assert create(fake, http, avatar_id="retired").status_code == 410
    assert create(fake, http, avatar_id="anna").status_code == 201


def test_terminate_ends_a_live_session_once(fake: FakeUpstream, http: requests.Session) -> None:
    sid = live_session(fake, http)["session_id"]
    url = f"{fake.url}/api/v1/sessions/{sid}"
    first = http.delete(url, headers=av_headers(fake))
    assert (first.status_code, first.json()) == (200, {"status": "terminated"})
    assert fake.live_session_ids() == set()
    assert fake.sessions[sid].ended_at is not None
    assert http.delete(url, headers=av_headers(fake)).status_code == 404
    unknown = http.delete(f"{fake.url}/api/v1/sessions/fake-sess-nope", headers=av_headers(fake))
    assert unknown.status_code == 404


def test_task_on_a_live_session(fake: FakeUpstream, http: requests.Session) -> None:
    sid = live_session(fake, http)["session_id"]
    url = f"{fake.url}/api/v1/sessions/{sid}/tasks"
    answer = http.post(url, json={"text": "Hello"}, headers=av_headers(fake))
    assert answer.status_code == 200
    assert answer.json()["task_id"].startswith("fake-task-")
    assert fake.sessions[sid].tasks == ("Hello",)
    assert http.post(url, json={"words": "x"}, headers=av_headers(fake)).status_code == 422
    fake.end_session(sid)
    assert http.post(url, json={"text": "Bye"}, headers=av_headers(fake)).status_code == 404


# -- the browser SDK's endpoint -------------------------------------------------------------


def test_sdk_session_for_a_live_token(fake: FakeUpstream, http: requests.Session) -> None:
    created = live_session(fake, http)
    answer = http.get(
        f"{fake.url}/_sdk/v0/sessions",
        headers={"X-Session-Token": created["token"], "Origin": "http://localhost:8000"},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["id"] == created["session_id"]
    assert body["limited_access_token"]
    assert body["session_config"] == {"uses_stacked_alpha": False}
    assert body["room_url"].startswith(f"{fake.url}/_fake/daily-room/")
    assert answer.headers["Access-Control-Allow-Origin"] == "http://localhost:8000"
    # The room answers 404, so a Daily join can never complete or leave loopback.
    assert http.get(body["room_url"]).status_code == 404
    assert len(fake.requests_for(DAILY_ROOM)) == 1


def test_sdk_session_refuses_unknown_and_ended_tokens(
    fake: FakeUpstream, http: requests.Session
) -> None:
    created = live_session(fake, http)
    url = f"{fake.url}/_sdk/v0/sessions"
    assert http.get(url).status_code == 401
    assert http.get(url, headers={"X-Session-Token": "fake-tok-nope"}).status_code == 401
    fake.end_session(created["session_id"])
    denied = http.get(url, headers={"X-Session-Token": created["token"]})
    assert denied.status_code == 401
    assert denied.headers["Access-Control-Allow-Origin"] == "*"


def test_sdk_session_answers_the_cors_preflight(fake: FakeUpstream, http: requests.Session) -> None:
    answer = http.options(
        f"{fake.url}/_sdk/v0/sessions",
        headers={
            "Origin": "http://127.0.0.1:8000",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-session-token",
        },
    )
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8000"
    assert "GET" in answer.headers["Access-Control-Allow-Methods"]
    assert "x-session-token" in answer.headers["Access-Control-Allow-Headers"].lower()
    assert [r.route for r in fake.requests] == [SDK_PREFLIGHT]


# -- recording ------------------------------------------------------------------------------


def test_every_request_is_recorded(fake: FakeUpstream, http: requests.Session) -> None:
    sid = live_session(fake, http)["session_id"]
    http.delete(f"{fake.url}/api/v1/sessions/{sid}?reason=test", headers=av_headers(fake))
    http.get(f"{fake.url}/nowhere")
    assert [r.route for r in fake.requests] == [
        OPENAI_CLIENT_SECRET,
        AVATURN_CREATE,
        AVATURN_TERMINATE,
        UNKNOWN,
    ]
    create_request = fake.requests_for(AVATURN_CREATE)[0]
    assert create_request.method == "POST"
    assert create_request.headers["authorization"] == f"Bearer {fake.avaturn_api_key}"
    assert json.loads(create_request.body) == create_request.json
    terminate = fake.requests_for(AVATURN_TERMINATE)[0]
    assert terminate.path == f"/api/v1/sessions/{sid}?reason=test"
    assert terminate.body == b""
    assert terminate.json is None


def test_chunked_request_bodies_are_read(fake: FakeUpstream, http: requests.Session) -> None:
    payload = json.dumps(create_body(issue_secret(fake, http))).encode()
    answer = http.post(
        f"{fake.url}/api/v1/sessions",
        data=(payload[i : i + 7] for i in range(0, len(payload), 7)),
        headers=av_headers(fake),
    )
    assert answer.status_code == 201
    assert fake.requests_for(AVATURN_CREATE)[0].body == payload


# -- fault injection ------------------------------------------------------------------------


def test_status_fault_answers_once_then_recovers(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.fail(OPENAI_CLIENT_SECRET, status=503)
    with pytest.raises(openai.APIStatusError) as caught:
        oai.realtime.client_secrets.create(session={"type": "realtime"})
    assert caught.value.status_code == 503
    assert caught.value.response.json()["error"]["code"] == "fake_fault"
    assert fake.secrets_issued == {}
    assert oai.realtime.client_secrets.create(session={"type": "realtime"}).value


def test_status_fault_with_a_body_until_cleared(fake: FakeUpstream, http: requests.Session) -> None:
    sid = live_session(fake, http)["session_id"]
    fake.fail(AVATURN_TERMINATE, status=429, body={"detail": "slow down"}, times=None)
    url = f"{fake.url}/api/v1/sessions/{sid}"
    for _ in range(3):
        answer = http.delete(url, headers=av_headers(fake))
        assert (answer.status_code, answer.json()) == (429, {"detail": "slow down"})
    assert fake.live_session_ids() == {sid}
    fake.clear_faults()
    assert http.delete(url, headers=av_headers(fake)).status_code == 200


def test_close_fault_hangs_up_without_answering(
    fake: FakeUpstream, http: requests.Session, oai: openai.OpenAI
) -> None:
    fake.fail(OPENAI_CLIENT_SECRET, mode="close")
    with pytest.raises(openai.APIConnectionError):
        oai.realtime.client_secrets.create(session={"type": "realtime"})
    fake.fail(AVATURN_CREATE, mode="close")
    with pytest.raises(requests.ConnectionError):
        create(fake, http)
    assert fake.sessions == {}
    assert create(fake, http).status_code == 201


def test_timeout_fault_takes_effect_but_answers_too_late(
    fake: FakeUpstream, http: requests.Session
) -> None:
    secret = issue_secret(fake, http)
    fake.fail(AVATURN_CREATE, mode="timeout", delay=1.0)
    with pytest.raises(requests.ReadTimeout):
        http.post(
            f"{fake.url}/api/v1/sessions",
            json=create_body(secret),
            headers=av_headers(fake),
            timeout=0.2,
        )
    # Upstream made the session; only its answer was lost: an orphan to clean up.
    assert len(fake.live_session_ids()) == 1


def test_delay_fault_answers_after_the_delay(fake: FakeUpstream, http: requests.Session) -> None:
    fake.fail(OPENAI_CLIENT_SECRET, mode="delay", delay=0.2)
    started = time.perf_counter()
    issue_secret(fake, http)
    assert time.perf_counter() - started >= 0.2


def test_malformed_fault_truncates_the_json(fake: FakeUpstream, http: requests.Session) -> None:
    fake.fail(AVATURN_CREATE, mode="malformed")
    answer = create(fake, http)
    assert answer.status_code == 201
    assert answer.text.startswith("{")
    with pytest.raises(ValueError):
        answer.json()
    assert len(fake.live_session_ids()) == 1


def test_malformed_client_secret_breaks_the_sdk(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.fail(OPENAI_CLIENT_SECRET, mode="malformed")
    # openai 3.54 lets the bare JSONDecodeError out, not one of its APIError classes.
    with pytest.raises(json.JSONDecodeError):
        oai.realtime.client_secrets.create(session={"type": "realtime"})


def test_missing_fields_fault(fake: FakeUpstream, http: requests.Session) -> None:
    fake.fail(AVATURN_CREATE, mode="missing_fields")
    answer = create(fake, http)
    assert answer.status_code == 201
    body = answer.json()
    assert isinstance(body, dict)
    assert "session_id" not in body
    assert "token" not in body


def test_drip_fault_sends_the_body_slowly(fake: FakeUpstream, http: requests.Session) -> None:
    fake.fail(AVATURN_CREATE, mode="drip", delay=0.003)
    started = time.perf_counter()
    answer = create(fake, http)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 201
    assert elapsed >= len(answer.content) * 0.003
    assert set(answer.json()) == {"session_id", "token"}


def test_create_then_status_leaves_a_live_session(
    fake: FakeUpstream, http: requests.Session
) -> None:
    fake.fail(AVATURN_CREATE, mode="create_then_status", status=502)
    answer = create(fake, http)
    assert answer.status_code == 502
    assert "detail" in answer.json()
    assert len(fake.live_session_ids()) == 1


def test_faults_are_used_in_order(fake: FakeUpstream, http: requests.Session) -> None:
    fake.fail(SDK_SESSION, status=500)
    fake.fail(SDK_SESSION, status=503, times=2)
    url = f"{fake.url}/_sdk/v0/sessions"
    statuses = [http.get(url, headers={"Origin": "http://a.test"}) for _ in range(4)]
    assert [r.status_code for r in statuses] == [500, 503, 503, 401]
    # A failure the browser can read, not a CORS error.
    assert statuses[0].headers["Access-Control-Allow-Origin"] == "http://a.test"


@pytest.mark.parametrize(
    ("route", "kwargs"),
    [
        ("nowhere", {}),
        (AVATURN_CREATE, {"mode": "explode"}),
        (AVATURN_TERMINATE, {"mode": "create_then_status"}),
        (AVATURN_CREATE, {"times": 0}),
        (AVATURN_CREATE, {"status": 99}),
        (AVATURN_CREATE, {"delay": -1}),
    ],
)
def test_fail_rejects_bad_arguments(fake: FakeUpstream, route: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        fake.fail(route, **kwargs)


def test_latency_is_added_before_answering(fake: FakeUpstream, http: requests.Session) -> None:
    sid = live_session(fake, http)["session_id"]
    fake.set_latency(AVATURN_TASK, 0.2)
    url = f"{fake.url}/api/v1/sessions/{sid}/tasks"
    started = time.perf_counter()
    assert http.post(url, json={"text": "hi"}, headers=av_headers(fake)).status_code == 200
    assert time.perf_counter() - started >= 0.2
    fake.set_latency(AVATURN_TASK, 0)
    assert fake.state()["latency"].get(AVATURN_TASK, 0) == 0


def test_constructor_latency_survives_reset() -> None:
    with FakeUpstream(latency={SDK_SESSION: 0.15}) as fake, requests.Session() as http:
        fake.reset()
        started = time.perf_counter()
        http.get(f"{fake.url}/_sdk/v0/sessions")
        assert time.perf_counter() - started >= 0.15


def test_stop_wakes_a_handler_stuck_in_a_timeout() -> None:
    fake = FakeUpstream().start()
    fake.fail(SDK_SESSION, mode="timeout")  # 30 s by default
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{fake.url}/_sdk/v0/sessions", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.1)
    started = time.perf_counter()
    fake.stop()
    caller.join(timeout=5)
    assert time.perf_counter() - started < 2
    assert not caller.is_alive()
    assert errors  # the connection was dropped, not answered
    assert not fake.running


# -- keep-alive and connection counting -------------------------------------------------------


def test_keep_alive_calls_share_one_connection(fake: FakeUpstream, http: requests.Session) -> None:
    # How fast those calls are is a benchmark's business (benchmarks/), not a test's.
    url = f"{fake.url}/_sdk/v0/sessions"
    for _ in range(25):
        http.get(url)
    assert fake.connections_opened == 1


def test_the_openai_sdk_reuses_its_connection(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    for _ in range(5):
        oai.realtime.client_secrets.create(session={"type": "realtime"})
    assert fake.connections_opened == 1


def test_separate_clients_open_separate_connections(fake: FakeUpstream) -> None:
    for _ in range(3):
        requests.get(f"{fake.url}/_sdk/v0/sessions")
    assert fake.connections_opened == 3


def test_closed_connections_are_counted_and_kept_alive_ones_are_not() -> None:
    # A fake of its own: another test's client closing late would count here.
    with FakeUpstream() as own, requests.Session() as session:
        for _ in range(3):
            session.get(f"{own.url}/_sdk/v0/sessions")
        assert (own.connections_opened, own.connections_closed) == (1, 0)
        session.close()
        assert wait_until(lambda: own.connections_closed == 1)
        requests.get(f"{own.url}/_sdk/v0/sessions")  # closes after the answer
        assert wait_until(lambda: own.connections_closed == 2)
        assert own.connections_opened == 2
        assert own.state()["connections_closed"] == 2


# -- control API ----------------------------------------------------------------------------


def test_control_state(fake: FakeUpstream, http: requests.Session) -> None:
    sid = live_session(fake, http)["session_id"]
    state = http.get(f"{fake.url}/_fake/state").json()
    assert state["url"] == fake.url
    assert state["live_sessions"] == [sid]
    assert state["counts"] == {OPENAI_CLIENT_SECRET: 1, AVATURN_CREATE: 1}
    assert state["connections_opened"] == 1
    assert state["secrets_issued"] == 1
    recent = state["recent_requests"]
    assert [r["route"] for r in recent] == [OPENAI_CLIENT_SECRET, AVATURN_CREATE]
    assert all(set(r) == {"route", "method", "path", "at"} for r in recent)
    # Control calls are not upstream traffic.
    assert len(fake.requests) == 2


def test_control_fail_latency_and_clear(fake: FakeUpstream, http: requests.Session) -> None:
    base = f"{fake.url}/_fake"
    assert http.post(f"{base}/fail", json={"route": SDK_SESSION, "status": 418}).status_code == 200
    assert http.get(f"{fake.url}/_sdk/v0/sessions").status_code == 418
    http.post(f"{base}/fail", json={"route": SDK_SESSION, "status": 500, "times": None})
    assert http.post(f"{base}/clear-faults", json={}).status_code == 200
    assert http.get(f"{fake.url}/_sdk/v0/sessions").status_code == 401
    latency = {"route": SDK_SESSION, "seconds": 0.15}
    assert http.post(f"{base}/latency", json=latency).status_code == 200
    assert http.get(f"{base}/state").json()["latency"] == {SDK_SESSION: 0.15}


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("fail", {"route": "nowhere"}),
        ("fail", {"route": SDK_SESSION, "mode": "explode"}),
        ("fail", {"route": SDK_SESSION, "colour": "red"}),
        ("fail", {}),
        ("fail", [SDK_SESSION]),
        ("latency", {"route": SDK_SESSION}),
        ("latency", {"route": SDK_SESSION, "seconds": "slow"}),
    ],
)
def test_control_rejects_bad_arguments(
    fake: FakeUpstream, http: requests.Session, endpoint: str, body: Any
) -> None:
    answer = http.post(f"{fake.url}/_fake/{endpoint}", json=body)
    assert answer.status_code == 400
    assert answer.json()["detail"]
    assert fake.state()["faults"] == []


def test_control_reset_and_unknown_endpoints(fake: FakeUpstream, http: requests.Session) -> None:
    live_session(fake, http)
    fake.fail(AVATURN_CREATE, times=None)
    fake.gone_avatars.add("x")
    assert http.post(f"{fake.url}/_fake/reset").json() == {"status": "reset"}
    assert fake.sessions == {}
    assert fake.secrets_issued == {}
    assert fake.requests == []
    assert fake.gone_avatars == set()
    assert fake.connections_opened == 0
    assert create(fake, http).status_code == 201
    assert http.get(f"{fake.url}/_fake/reset").status_code == 404
    assert http.post(f"{fake.url}/_fake/nothing").status_code == 404


# -- configuration --------------------------------------------------------------------------


def test_settings_and_urls(fake: FakeUpstream) -> None:
    assert fake.url.startswith("http://127.0.0.1:")
    assert fake.avaturn_url == fake.url
    assert fake.openai_base_url == f"{fake.url}/v1"
    assert fake.settings() == {
        "API_URL": fake.url,
        "OPENAI_BASE_URL": f"{fake.url}/v1",
        "API_KEY": "av-fake-avaturn-key",
        "OPENAI_API_KEY": "sk-fake-openai-key",
        "SDK_URL": f"{fake.url}/_fake/sdk/main.js",
        "SDK_INTEGRITY": "",
    }
    assert fake.cartesia_settings(AGENT_ID="agent_x") == {
        "API_URL": fake.url,
        "API_KEY": "sk_car_fake-cartesia-key",
        "AGENT_ID": "agent_x",
    }
    assert "key" not in repr(fake)


def test_serves_the_standin_sdk_to_other_origins(fake: FakeUpstream) -> None:
    answer = requests.get(fake.standin_sdk_url, headers={"Origin": "http://127.0.0.1:8000"})
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/javascript")
    # A module script from another origin loads only with CORS.
    assert answer.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8000"
    assert "export class AvaturnHead" in answer.text
    assert "_sdk/v0/sessions" in answer.text  # it presents the token, as the real SDK does
    # Not a control action, though under the control prefix.
    assert fake.state()["live_sessions"] == []


def test_custom_keys_and_port_rules() -> None:
    fake = FakeUpstream(openai_api_key="sk-a", avaturn_api_key="av-b")
    with pytest.raises(RuntimeError):
        _ = fake.url
    with fake:
        assert fake.settings()["API_KEY"] == "av-b"
        with pytest.raises(RuntimeError):
            fake.start()
    fake.stop()  # a second stop is harmless


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com"])
def test_non_loopback_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeUpstream(host=host)


# -- command line ---------------------------------------------------------------------------


def test_cli_parser_defaults_and_latency() -> None:
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.allow_non_loopback) == ("127.0.0.1", 8765, False)
    args = build_parser().parse_args(
        ["--port", "0", "--latency-openai", "0.5", "--latency-terminate", "1"]
    )
    fake = build_fake(args)
    assert fake.state()["latency"] == {OPENAI_CLIENT_SECRET: 0.5, AVATURN_TERMINATE: 1.0}


def test_cli_sets_the_keys_the_fake_accepts() -> None:
    # Distinctive keys make a sweep for leaked keys meaningful.
    args = build_parser().parse_args(["--openai-key", "sk-mine", "--avaturn-key", "av-mine"])
    fake = build_fake(args)
    assert (fake.openai_api_key, fake.avaturn_api_key) == ("sk-mine", "av-mine")


def test_cli_help_names_every_fault_mode_and_route() -> None:
    from django_avaturn.testing.records import FAULT_MODES, UPSTREAM_ROUTES

    text = " ".join(build_parser().format_help().split())
    for name in (*FAULT_MODES, *UPSTREAM_ROUTES, "/_fake/sdk/main.js"):
        assert name in text


@pytest.mark.parametrize(
    "argv", [["--host", "192.168.1.5"], ["--latency-create", "-1"], ["--port", "x"]]
)
def test_cli_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    capsys.readouterr()


@contextlib.contextmanager
def cli(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -m django_avaturn.testing --port 0 *args``, killed if a test leaves it running."""
    with subprocess.Popen(
        [sys.executable, "-m", "django_avaturn.testing", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def test_cli_runs_until_sigterm() -> None:
    with cli() as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        url = first.split(" on ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(f"{url}/_fake/state", timeout=5).json()["url"] == url
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
        rest = process.stdout.read()  # communicate() would skip what readline() buffered
    assert process.returncode == 0
    assert '"OPENAI_BASE_URL"' in rest
    # The Cartesia section too: the fake's URL and the key it accepts.
    cartesia = rest.split('For ENGINE "cartesia"', 1)[1].split(":\n", 1)[1]
    printed = json.loads(cartesia[: cartesia.index("}") + 1])
    assert printed == {"API_URL": url, "API_KEY": DEFAULT_CARTESIA_API_KEY}
    assert "stopped" in rest


def test_cli_serves_the_site_engines_realtime_fake_on_request() -> None:
    from websockets.sync.client import connect

    with cli("--realtime-port", "0") as process:
        assert process.stdout is not None
        lines = []
        while not lines or lines[-1] != "}":
            lines.append(process.stdout.readline().rstrip("\n"))
        printed = json.loads("\n".join(lines[lines.index("{") :]))
        websocket_url = printed["SITE_ENGINE"]["OPENAI_WEBSOCKET_URL"]
        assert websocket_url.startswith("ws://127.0.0.1:")
        # The OpenAI SDK's request: <websocket_base_url>/realtime, the fake's key.
        with connect(
            f"{websocket_url}/realtime?model=gpt-realtime",
            additional_headers={"Authorization": f"Bearer {printed['OPENAI_API_KEY']}"},
            open_timeout=5,
        ) as realtime:
            assert json.loads(realtime.recv(timeout=5))["type"] == "session.created"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=5)
    assert process.returncode == 0


def test_cli_serves_realtime_on_loopback_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--host", "192.168.1.5", "--allow-non-loopback", "--realtime-port", "0"])
    assert caught.value.code == 2
    assert "loopback only" in capsys.readouterr().err
