"""The fake's delivery of an engine's messages to the page (the stand-in SDK polls it).

``FakeUpstream.send_browser_message()`` plays Avaturn passing on an engine's
``sdk.message.send``; ``GET /_sdk/v0/sessions/messages`` is what the stand-in
SDK reads them from, with the session token, as the real SDK is handed them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from django_avaturn.testing import FakeUpstream

MESSAGE = {"type": "django_avaturn.message", "data": {"title": "Order 42", "items": [1, 2]}}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def live_session(fake: FakeUpstream, http: requests.Session) -> dict[str, str]:
    secret = http.post(
        f"{fake.openai_base_url}/realtime/client_secrets",
        json={"session": {"type": "realtime", "model": "gpt-realtime"}},
        headers={"Authorization": f"Bearer {fake.openai_api_key}"},
        timeout=5,
    ).json()["value"]
    answer = http.post(
        f"{fake.url}/api/v1/sessions",
        json={"conversation_engine": {"type": "openai-realtime", "client_secret": secret}},
        headers={"Authorization": f"Bearer {fake.avaturn_api_key}"},
        timeout=5,
    )
    assert answer.status_code == 201, answer.text
    body: dict[str, str] = answer.json()
    return body


def poll(
    fake: FakeUpstream, http: requests.Session, token: str, after: str = "0"
) -> requests.Response:
    return http.get(
        f"{fake.url}/_sdk/v0/sessions/messages",
        params={"after": after},
        headers={"X-Session-Token": token, "Origin": "http://127.0.0.1:8000"},
        timeout=5,
    )


def test_messages_reach_the_session_token_in_order_from_a_count(
    fake: FakeUpstream, http: requests.Session
) -> None:
    session = live_session(fake, http)
    other = live_session(fake, http)
    assert poll(fake, http, session["token"]).json() == {"messages": [], "next": 0}

    second = {"type": "django_avaturn.message", "data": {"n": 2}}
    fake.send_browser_message(session["session_id"], MESSAGE)
    fake.send_browser_message(session["session_id"], second)

    answer = poll(fake, http, session["token"])
    assert answer.status_code == 200
    assert answer.json() == {"messages": [MESSAGE, second], "next": 2}
    # The page's origin may read it (the stand-in runs on the site's page).
    assert answer.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8000"
    assert poll(fake, http, session["token"], after="1").json() == {
        "messages": [second],
        "next": 2,
    }
    assert poll(fake, http, session["token"], after="2").json() == {"messages": [], "next": 2}
    # Another session's page sees none of them.
    assert poll(fake, http, other["token"]).json() == {"messages": [], "next": 0}
    assert fake.browser_messages(session["session_id"]) == [MESSAGE, second]


def test_polling_is_not_recorded_as_a_request(fake: FakeUpstream, http: requests.Session) -> None:
    session = live_session(fake, http)
    before = len(fake.requests)
    for _ in range(3):
        poll(fake, http, session["token"])
    assert len(fake.requests) == before


def test_a_preflight_allows_the_token_header(fake: FakeUpstream, http: requests.Session) -> None:
    answer = http.options(
        f"{fake.url}/_sdk/v0/sessions/messages",
        headers={
            "Origin": "http://127.0.0.1:8000",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-session-token",
        },
        timeout=5,
    )
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8000"
    assert "X-Session-Token" in answer.headers["Access-Control-Allow-Headers"]
    assert "GET" in answer.headers["Access-Control-Allow-Methods"]


def test_an_ended_session_or_a_bad_token_or_count_is_refused(
    fake: FakeUpstream, http: requests.Session
) -> None:
    session = live_session(fake, http)
    assert poll(fake, http, session["token"], after="-1").status_code == 400
    assert poll(fake, http, session["token"], after="x").status_code == 400
    assert poll(fake, http, "fake-tok-unknown").status_code == 401
    assert fake.end_session(session["session_id"])
    assert poll(fake, http, session["token"]).status_code == 401
    with pytest.raises(ValueError, match="no live session"):
        fake.send_browser_message(session["session_id"], MESSAGE)
    with pytest.raises(ValueError, match="no live session"):
        fake.send_browser_message("fake-sess-unknown", MESSAGE)
    answer = http.post(
        f"{fake.url}/_sdk/v0/sessions/messages",
        headers={"X-Session-Token": session["token"]},
        timeout=5,
    )
    assert answer.status_code == 405


@pytest.mark.parametrize(
    "message",
    [
        {"data": {"a": 1}},
        {"type": 3, "data": {}},
        ["django_avaturn.message"],
        {"type": "django_avaturn.message", "data": {"when": object()}},
    ],
)
def test_a_message_the_sdk_could_not_deliver_is_refused(
    fake: FakeUpstream, http: requests.Session, message: object
) -> None:
    session = live_session(fake, http)
    with pytest.raises(ValueError):
        fake.send_browser_message(session["session_id"], message)  # type: ignore[arg-type]
    assert fake.browser_messages(session["session_id"]) == []


def test_reset_forgets_the_messages(fake: FakeUpstream, http: requests.Session) -> None:
    session = live_session(fake, http)
    fake.send_browser_message(session["session_id"], MESSAGE)
    fake.reset()
    assert fake.browser_messages(session["session_id"]) == []
