"""Property-based tests: every input the API and the template tag accept.

Whatever the input, the API answers JSON with a 2xx or a documented 4xx
(never a 5xx, never a key), and the widget tag's options stay data: they
never add markup to the page.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import pytest
from django.template import Context, Template
from django.test import RequestFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_avaturn.models import Session
from tests.helpers import KEYS, LIST_URL
from tests.live_fake import csrf_json

pytestmark = pytest.mark.django_db

FIXTURES_OK = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=10,
)
start_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "avatar_id": json_values,
            "config": st.one_of(
                st.from_regex(r"[A-Za-z0-9_.-]{1,100}", fullmatch=True), json_values
            ),
        },
    )
    | st.dictionaries(st.text(max_size=30), json_values, max_size=5)
    | json_values
)


def _assert_clean_json(response: Any, allowed: set[int]) -> Any:
    assert response.status_code in allowed, (response.status_code, response.content)
    text = response.content.decode()
    for key in KEYS:
        assert key not in text
    if response.status_code == 204:
        return None
    assert response["Content-Type"] == "application/json"
    return json.loads(text)


@FIXTURES_OK
@given(body=start_bodies)
def test_any_start_body_is_201_or_a_json_400(api_client: Any, upstream: Any, body: Any) -> None:
    response = csrf_json(api_client, "post", LIST_URL, json.dumps(body))
    data = _assert_clean_json(response, {201, 400})
    if response.status_code == 201:
        assert set(data) == {"session_id", "token", "expires_at", "api_host", "engine"}
        assert isinstance(body, dict) and set(body) <= {"config"}
    else:
        assert data["code"] in {"invalid", "parse_error"}


@FIXTURES_OK
@given(raw=st.binary(max_size=200))
def test_any_raw_start_body_is_201_or_a_json_400(
    api_client: Any, upstream: Any, raw: bytes
) -> None:
    response = csrf_json(api_client, "post", LIST_URL, raw)
    _assert_clean_json(response, {201, 400})


session_ids = st.text(min_size=1, max_size=300).filter(lambda s: s not in {".", ".."})


@FIXTURES_OK
@given(session_id=session_ids, action=st.sampled_from(["get", "delete", "heartbeat"]))
def test_any_session_id_in_a_url_is_a_json_404(
    api_client: Any, upstream: Any, session_id: str, action: str
) -> None:
    url = f"{LIST_URL}{quote(session_id, safe='')}/"
    if action == "get":
        response = api_client.get(url)
    elif action == "delete":
        response = csrf_json(api_client, "delete", url)
    else:
        response = csrf_json(api_client, "post", f"{url}heartbeat/", {})
    # A "/" inside the id (quoted or not) may reach no route at all: Django's own 404.
    if response.status_code == 404 and response.get("Content-Type", "").startswith("text/html"):
        return
    data = _assert_clean_json(response, {404})
    assert data["code"] == "not_found"


@FIXTURES_OK
@given(body=json_values | st.binary(max_size=50))
def test_any_heartbeat_body_is_ignored(api_client: Any, upstream: Any, body: Any) -> None:
    started = csrf_json(api_client, "post", LIST_URL, {})
    assert started.status_code == 201
    url = f"{LIST_URL}{started.json()['session_id']}/heartbeat/"
    raw = body if isinstance(body, bytes) else json.dumps(body)
    response = csrf_json(api_client, "post", url, raw)
    _assert_clean_json(response, {204, 400})
    Session.objects.all().delete()


# --------------------------------------------------------------------------- the template tag


class _Shape(HTMLParser):
    """The page's structure: tag names and attribute names, in order, and all text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.shape: list[tuple[str, tuple[str, ...]]] = []
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.shape.append((tag, tuple(name for name, _ in attrs)))
        self.values += [value or "" for _, value in attrs]

    def handle_endtag(self, tag: str) -> None:
        self.shape.append((f"/{tag}", ()))

    def handle_data(self, data: str) -> None:
        self.values.append(data)


TAG = Template(
    "{% load avaturn %}{% avaturn_head css_class=v avatar_id=v config=v widget_id=v "
    "start_label=v stop_label=v width=v height=v %}"
)


def _render(value: str) -> _Shape:
    request = RequestFactory().get("/")
    parser = _Shape()
    parser.feed(TAG.render(Context({"v": value, "request": request})))
    parser.close()
    return parser


@settings(max_examples=150, deadline=None)
@given(
    value=st.text(min_size=1, max_size=80)
    | st.sampled_from(['"><script>alert(1)</script>', "' onload='x", "</script><svg/onload=1>"])
)
def test_tag_options_never_add_markup(value: str) -> None:
    rendered = _render(value)
    assert rendered.shape == _render("benign").shape
    assert any(value in text for text in rendered.values)
    for key in KEYS:
        assert key not in "".join(rendered.values)
