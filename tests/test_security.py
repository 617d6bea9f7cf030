"""Hostile and careless callers, with the exact status each one gets, and a key sweep.

Runs against the loopback fake over real HTTP, so the upstream clients, their
logging and their errors are the real ones.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client, RequestFactory
from django.views.debug import ExceptionReporter
from rest_framework.test import APIClient

from django_avaturn import services
from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import AvaturnError, NotConfigured
from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions.expiry import expire_sessions
from django_avaturn.testing import (
    AVATURN_CREATE,
    AVATURN_TERMINATE,
    CARTESIA_ACCESS_TOKEN,
    OPENAI_CLIENT_SECRET,
    FakeUpstream,
)
from django_avaturn.upstream import clients
from tests.helpers import LIST_URL, AvaturnOverrides, closed_port, release_held_starts
from tests.live_fake import FAST_TIMEOUTS, OUTLASTS_TIMEOUT, csrf_json

pytestmark = pytest.mark.django_db(transaction=True)


def _client(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def started(live_fake: FakeUpstream, other_user: Any) -> Session:
    """A live session belonging to someone else."""
    return services.start_session(other_user).session


# --------------------------------------------------------------------------- who may do what


@pytest.mark.parametrize("method", ["get", "delete", "heartbeat"])
def test_someone_elses_session_is_404_and_untouched(
    live_fake: FakeUpstream, user: Any, started: Session, method: str
) -> None:
    client = _client(user)
    url = f"{LIST_URL}{started.session_id}/"
    if method == "get":
        response = client.get(url)
    elif method == "delete":
        response = csrf_json(client, "delete", url)
    else:
        response = csrf_json(client, "post", f"{url}heartbeat/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    started.refresh_from_db()
    assert started.status == SessionStatus.LIVE and started.last_seen_at is None
    assert live_fake.live_session_ids() == {started.session_id}


def test_unknown_session_id_is_404(live_fake: FakeUpstream, user: Any) -> None:
    response = _client(user).get(f"{LIST_URL}no-such-session/")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", ""), ("delete", "{id}/"), ("post", "{id}/heartbeat/")],
)
def test_missing_csrf_token_is_403_and_changes_nothing(
    live_fake: FakeUpstream, user: Any, method: str, path: str
) -> None:
    session = services.start_session(user).session
    client = _client(user)
    url = LIST_URL + path.format(id=session.session_id)
    response = getattr(client, method)(url, data="{}", content_type="application/json")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert "CSRF" in response.json()["detail"]
    assert Session.objects.get().status == SessionStatus.LIVE
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 1
    assert live_fake.requests_for(AVATURN_TERMINATE) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", ""), ("post", ""), ("get", "x/"), ("delete", "x/"), ("post", "x/heartbeat/")],
)
def test_anonymous_is_403_not_authenticated(
    live_fake: FakeUpstream, method: str, path: str
) -> None:
    response = getattr(APIClient(), method)(LIST_URL + path, data={}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"
    assert live_fake.requests == []


def test_inactive_user_is_403_even_with_a_session_cookie(
    live_fake: FakeUpstream, user: Any
) -> None:
    session = services.start_session(user).session
    client = _client(user)
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    for response in (
        client.get(LIST_URL),
        csrf_json(client, "post", LIST_URL, {}),
        csrf_json(client, "delete", f"{LIST_URL}{session.session_id}/"),
    ):
        assert response.status_code == 403
        assert response.json()["code"] == "not_authenticated"
    assert len(live_fake.requests_for(AVATURN_CREATE)) == 1


def test_a_user_deactivated_after_authenticating_cannot_start(
    live_fake: FakeUpstream, user: Any
) -> None:
    # The request authenticated `user` (active); staff deactivate them before
    # the start reserves its row. Deactivation ended nothing (there was nothing
    # yet), so a session started now would run on for an inactive user.
    type(user).objects.filter(pk=user.pk).update(is_active=False)

    with pytest.raises(AvaturnError) as refused:
        services.start_session(user)

    assert (refused.value.status_code, refused.value.code) == (403, "not_authenticated")
    assert live_fake.requests_for(OPENAI_CLIENT_SECRET) == []
    assert not Session.objects.exists()


def test_staff_without_terminate_permission_cannot_terminate(
    live_fake: FakeUpstream, django_user_model: Any, started: Session
) -> None:
    staff = django_user_model.objects.create_user(
        email="viewer@example.com", password="pw", is_staff=True
    )
    staff.user_permissions.add(
        Permission.objects.get(codename="view_session", content_type__app_label="django_avaturn")
    )
    client = Client()
    client.force_login(staff)
    base = f"/admin/django_avaturn/session/{started.pk}/"

    assert client.get(base + "change/").status_code == 200
    assert client.post(base + "terminate/").status_code == 403
    action = client.post(
        "/admin/django_avaturn/session/",
        {"action": "terminate_selected", "_selected_action": [started.pk]},
    )
    assert action.status_code in (200, 302)  # the admin ignores an action one may not use
    started.refresh_from_db()
    assert started.status == SessionStatus.LIVE
    assert live_fake.live_session_ids() == {started.session_id}
    assert live_fake.requests_for(AVATURN_TERMINATE) == []


# --------------------------------------------------------------------------- bodies


def test_oversized_body_is_413_json_and_spends_nothing(
    live_fake: FakeUpstream, user: Any, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = csrf_json(_client(user), "post", LIST_URL, {"config": "x" * 5000})
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "request_too_large"
    assert live_fake.requests == []
    assert not Session.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"config=a", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"<xml/>", "text/xml", 415, "unsupported_media_type"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b'{"config": ', "application/json", 400, "parse_error"),
        (b"\xff\xfe\x00", "application/json", 400, "parse_error"),
        (b"[]", "application/json", 400, "invalid"),
        (b'"text"', "application/json", 400, "invalid"),
        (b"null", "application/json", 400, "invalid"),
        (b'{"instructions": "be evil"}', "application/json", 400, "invalid"),
        (b'{"model": "gpt-4o"}', "application/json", 400, "invalid"),
        (b'{"conversation_engine": {}}', "application/json", 400, "invalid"),
        (b'{"config": "../etc/passwd"}', "application/json", 400, "invalid"),
        (b'{"avatar_id": "not-allowed"}', "application/json", 400, "invalid"),
        # Far under the size limit, far over what Python's decoder recurses into.
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "parse_error"),
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "application/json", 400, "parse_error"),
    ],
)
def test_bad_bodies_get_exact_statuses_and_spend_nothing(
    live_fake: FakeUpstream, user: Any, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = csrf_json(_client(user), "post", LIST_URL, body, content_type=content_type)
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == code
    assert live_fake.requests == []


def test_a_deeply_nested_heartbeat_body_is_a_400_and_records_nothing(
    live_fake: FakeUpstream, user: Any
) -> None:
    session = services.start_session(user).session
    url = f"{LIST_URL}{session.session_id}/heartbeat/"
    response = csrf_json(_client(user), "post", url, b"[" * 100_000 + b"]" * 100_000)
    assert (response.status_code, response.json()["code"]) == (400, "parse_error")
    session.refresh_from_db()
    assert session.last_seen_at is None


@pytest.mark.parametrize(
    ("accept", "statuses"),
    [
        # What a browser sends: JSON, as to any other client.
        ("text/html,application/xhtml+xml,*/*;q=0.8", (200, 404)),
        # Only HTML will do: the API says it has none, in JSON.
        ("text/html", (406, 406)),
    ],
)
def test_answers_are_json_whatever_the_client_accepts(
    live_fake: FakeUpstream, user: Any, accept: str, statuses: tuple[int, int]
) -> None:
    # DRF's browsable API is one of its default renderers; a site's defaults
    # must not turn the API's answers, or its errors, into HTML pages.
    client = _client(user)
    listed = client.get(LIST_URL, HTTP_ACCEPT=accept)
    missing = client.get(f"{LIST_URL}no-such-session/", HTTP_ACCEPT=accept)
    assert (listed.status_code, missing.status_code) == statuses
    assert listed["Content-Type"] == missing["Content-Type"] == "application/json"
    if statuses == (200, 404):
        assert (listed.json(), missing.json()["code"]) == ([], "not_found")
    else:
        assert listed.json()["code"] == missing.json()["code"] == "not_acceptable"


def test_unknown_fields_are_named_in_the_error(live_fake: FakeUpstream, user: Any) -> None:
    response = csrf_json(_client(user), "post", LIST_URL, {"voice": "ash", "tools": []})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"voice", "tools"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("", '{"\\ud800": 1}'),  # an unknown field named by a lone surrogate
        ("transcripts/", '{"role": "\\udfff", "text": "hi"}'),  # a choice DRF quotes back
    ],
)
def test_a_lone_surrogate_quoted_back_is_a_json_400_not_a_500(
    live_fake: FakeUpstream, user: Any, avaturn: AvaturnOverrides, path: str, body: str
) -> None:
    # Valid JSON, but a string UTF-8 cannot encode: an error message that
    # quotes it must still render.
    avaturn(TRANSCRIPTS_ENABLED=True)
    client = _client(user)
    url = LIST_URL
    if path:
        url = f"{LIST_URL}{csrf_json(client, 'post', LIST_URL, {}).json()['session_id']}/{path}"
    response = csrf_json(client, "post", url, body)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert r"\ud" in response.content.decode("ascii")  # quoted back, escaped


# --------------------------------------------------------------------------- the key sweep

SENTINEL_AVATURN_KEY = "av-SENTINEL-avaturn-5f0c2b9e1d"
SENTINEL_OPENAI_KEY = "sk-SENTINEL-openai-8a7d6c5b4e"
SENTINEL_CARTESIA_KEY = "car-SENTINEL-cartesia-3e2d1c0b9a"
SENTINEL_HEADER = "hdr-SENTINEL-external-7c6b5a4d3e"
SENTINELS = (SENTINEL_AVATURN_KEY, SENTINEL_OPENAI_KEY, SENTINEL_CARTESIA_KEY, SENTINEL_HEADER)


@pytest.fixture
def sentinel_fake(settings: Any) -> Iterator[FakeUpstream]:
    with FakeUpstream(
        openai_api_key=SENTINEL_OPENAI_KEY,
        avaturn_api_key=SENTINEL_AVATURN_KEY,
        cartesia_api_key=SENTINEL_CARTESIA_KEY,
    ) as fake:
        avaturn = {**settings.AVATURN, **fake.settings(), **FAST_TIMEOUTS}
        avaturn.pop("OPENAI_HTTP_CLIENT", None)
        avaturn["ON_SESSION_LIMIT"] = "end_oldest"
        avaturn["CARTESIA"] = fake.cartesia_settings(AGENT_ID="agent_sweep")
        avaturn["EXTERNAL_ENGINE"] = {
            "URL": "wss://engine.example.com/avaturn",
            "HEADERS": {"X-Engine-Secret": SENTINEL_HEADER},
        }
        settings.AVATURN = avaturn
        yield fake


def _echo(route: str, status: int) -> dict[str, Any]:
    """An error body that repeats the key back, as careless upstreams do."""
    text = (
        f"Incorrect API key provided: {SENTINELS[0]} / Bearer {SENTINELS[1]}"
        f" / {SENTINEL_CARTESIA_KEY} / X-Engine-Secret: {SENTINEL_HEADER}"
    )
    if route == OPENAI_CLIENT_SECRET:
        return {"error": {"message": text, "type": "invalid_request_error", "code": status}}
    return {"detail": text, "headers": {"Authorization": f"Bearer {SENTINEL_AVATURN_KEY}"}}


def test_no_key_anywhere(
    sentinel_fake: FakeUpstream,
    settings: Any,
    user: Any,
    django_user_model: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # root: every library's DEBUG output too
    seen: list[str] = []
    client = _client(user)

    def keep(response: Any) -> Any:
        seen.append(response.content.decode("utf-8", "replace"))
        seen.extend(f"{name}: {value}" for name, value in response.items())
        return response

    # Success: start, list, read, heartbeat, end.
    body = keep(csrf_json(client, "post", LIST_URL, {})).json()
    url = f"{LIST_URL}{body['session_id']}/"
    keep(client.get(LIST_URL))
    keep(client.get(url))
    keep(csrf_json(client, "post", f"{url}heartbeat/"))
    keep(csrf_json(client, "delete", url))
    keep(csrf_json(client, "post", f"{url}heartbeat/"))  # 409: ended

    # Every failure of a start, with upstream bodies that echo the keys.
    # (A create with an unknown outcome holds the user's slot: released after each.)
    for route in (OPENAI_CLIENT_SECRET, AVATURN_CREATE):
        for status in (400, 401, 403, 422, 429, 500, 503):
            sentinel_fake.fail(route, status=status, body=_echo(route, status))
            keep(csrf_json(client, "post", LIST_URL, {}))
            release_held_starts()
        for mode in ("malformed", "missing_fields", "close"):
            sentinel_fake.fail(route, mode=mode)
            keep(csrf_json(client, "post", LIST_URL, {}))
            release_held_starts()
        sentinel_fake.fail(route, mode="timeout", delay=OUTLASTS_TIMEOUT)
        keep(csrf_json(client, "post", LIST_URL, {}))
        release_held_starts()

    # The other engines: a success each, and Cartesia's and Avaturn's failures echoing them.
    for engine in ("cartesia", "external"):
        settings.AVATURN = {**settings.AVATURN, "ENGINE": engine}
        keep(csrf_json(client, "post", LIST_URL, {}))
        routes = (
            (CARTESIA_ACCESS_TOKEN, AVATURN_CREATE) if engine == "cartesia" else (AVATURN_CREATE,)
        )
        for route in routes:
            for status in (400, 401, 500):
                sentinel_fake.fail(route, status=status, body=_echo(route, status))
                keep(csrf_json(client, "post", LIST_URL, {}))
                release_held_starts()
            sentinel_fake.fail(route, mode="malformed")
            keep(csrf_json(client, "post", LIST_URL, {}))
            release_held_starts()
    settings.AVATURN = {**settings.AVATURN, "ENGINE": "openai-realtime"}

    # Failed ends and a failed replacement, echoing the keys.
    live = keep(csrf_json(client, "post", LIST_URL, {})).json()
    sentinel_fake.fail(AVATURN_TERMINATE, status=500, body=_echo(AVATURN_TERMINATE, 500))
    keep(csrf_json(client, "delete", f"{LIST_URL}{live['session_id']}/"))
    sentinel_fake.fail(AVATURN_TERMINATE, status=401, body=_echo(AVATURN_TERMINATE, 401))
    keep(csrf_json(client, "post", LIST_URL, {}))

    # The service layer's own exceptions, and the repr of everything we hand out.
    objects: list[Any] = [avaturn_settings, clients.get_avaturn_client()]
    objects.append(clients.get_openai_secrets())
    for route in (OPENAI_CLIENT_SECRET, AVATURN_CREATE):
        sentinel_fake.fail(route, status=401, body=_echo(route, 401))
        try:
            services.start_session(user)
        except AvaturnError as exc:
            objects.append(exc)
            seen.append("".join(traceback.format_exception(exc)))
    # The failed ends above stay ending for the expiry command's retry, and hold
    # the user's slot until it has run (its log lines are swept too).
    expire_sessions()
    started = services.start_session(user)
    objects += [started, started.session]
    sentinel_fake.fail(AVATURN_TERMINATE, status=403, body=_echo(AVATURN_TERMINATE, 403))
    try:
        services.end_session(started.session, reason=EndReason.ADMIN)
    except AvaturnError as exc:
        objects.append(exc)
        seen.append("".join(traceback.format_exception(exc)))
    seen += [repr(obj) for obj in objects] + [str(obj) for obj in objects]

    # The admin: list, every row's page, the usage page, a failing terminate button.
    admin = django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    staff = Client()
    staff.force_login(admin)
    keep(staff.get("/admin/django_avaturn/session/"))
    keep(staff.get("/admin/django_avaturn/session/?status__exact=failed"))
    for row in Session.objects.all():
        keep(staff.get(f"/admin/django_avaturn/session/{row.pk}/change/"))
    keep(staff.get("/admin/django_avaturn/session/usage/"))
    expire_sessions()  # the failed admin end above, retried
    row = services.start_session(user).session
    sentinel_fake.fail(AVATURN_TERMINATE, status=500, body=_echo(AVATURN_TERMINATE, 500))
    keep(staff.post(f"/admin/django_avaturn/session/{row.pk}/terminate/", follow=True))

    # The database: what staff and backups see.
    seen += [json.dumps(list(Session.objects.values()), default=str)]
    # Every log record at every level, with its traceback if any.
    formatter = logging.Formatter()
    for record in caplog.records:
        seen.append(formatter.format(record))
        if record.exc_info:
            seen.append(formatter.formatException(record.exc_info))

    # The upstreams did see the keys (so the sweep is not vacuous) ...
    assert any(
        r.headers.get("authorization") == f"Bearer {SENTINEL_AVATURN_KEY}"
        for r in sentinel_fake.requests
    )
    assert any(
        r.headers.get("authorization") == f"Bearer {SENTINEL_CARTESIA_KEY}"
        for r in sentinel_fake.requests
    )
    assert any(
        r.json["conversation_engine"].get("headers") == {"X-Engine-Secret": SENTINEL_HEADER}
        for r in sentinel_fake.requests_for(AVATURN_CREATE)
    )
    assert Session.objects.filter(end_detail__contains="redacted").exists()
    assert Session.objects.filter(engine="cartesia", end_detail__contains="redacted").exists()
    # ... and nothing else did.
    text = "\n".join(seen)
    assert len(caplog.records) > 50
    for key in SENTINELS:
        assert key not in text


@pytest.mark.parametrize(
    ("engine", "route", "handed_out"),
    [
        ("openai-realtime", OPENAI_CLIENT_SECRET, "ek_fake_"),
        ("openai-realtime", AVATURN_CREATE, "fake-tok-"),
        ("cartesia", CARTESIA_ACCESS_TOKEN, "ctk_fake_"),
    ],
)
def test_a_credential_in_an_answer_that_does_not_parse_is_kept_nowhere(
    live_fake: FakeUpstream,
    avaturn: AvaturnOverrides,
    user: Any,
    django_user_model: Any,
    caplog: pytest.LogCaptureFixture,
    engine: str,
    route: str,
    handed_out: str,
) -> None:
    """An accepted answer cut mid-JSON still holds (part of) the credential it hands out.

    The failure is recorded, but no excerpt of such an answer: not in the
    API's answer, the row, a log line or the admin.
    """
    caplog.set_level(logging.DEBUG)
    if engine == "cartesia":
        avaturn(ENGINE="cartesia", CARTESIA=live_fake.cartesia_settings(AGENT_ID="agent_abc"))
    live_fake.fail(route, mode="malformed")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)

    response = csrf_json(client, "post", LIST_URL, {})

    assert response.status_code == 502
    staff = Client()
    staff.force_login(
        django_user_model.objects.create_superuser(email="root@example.com", password="pw")
    )
    (row,) = Session.objects.all()
    seen = [
        response.content.decode(),
        json.dumps(list(Session.objects.values()), default=str),
        staff.get(f"/admin/django_avaturn/session/{row.pk}/change/").content.decode(),
        *(record.getMessage() for record in caplog.records),
    ]
    assert "unparseable answer" in row.end_detail
    for text in seen:
        assert handed_out not in text


@pytest.mark.parametrize("session_id", ["a%00b", "x" * 256])
def test_session_ids_no_row_can_have_are_404_on_every_database(
    api_client: Any, upstream: Any, session_id: str
) -> None:
    # PostgreSQL rejects a NUL in a query outright: that must not become a 503.
    response = api_client.get(f"/avaturn/sessions/{session_id}/")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def _debug_page() -> str:
    """What Django's DEBUG page (and its error e-mails) would show of the error being handled."""
    return ExceptionReporter(
        RequestFactory().get("/a-sites-own-view/"), *sys.exc_info()
    ).get_traceback_html()


@pytest.mark.parametrize(
    ("route", "fault"),
    [
        (OPENAI_CLIENT_SECRET, {"mode": "close"}),
        (OPENAI_CLIENT_SECRET, {"status": 500}),
        (OPENAI_CLIENT_SECRET, {"mode": "timeout", "delay": OUTLASTS_TIMEOUT}),
        (OPENAI_CLIENT_SECRET, {"mode": "malformed"}),
        (AVATURN_CREATE, {"mode": "close"}),
        (AVATURN_CREATE, {"mode": "timeout", "delay": OUTLASTS_TIMEOUT}),
        (AVATURN_CREATE, {"status": 503}),
        (AVATURN_CREATE, {"mode": "malformed"}),
        (AVATURN_TERMINATE, {"mode": "close"}),
        (AVATURN_TERMINATE, {"status": 500}),
        ("refused", {}),
    ],
)
def test_no_credential_on_a_debug_page_when_a_sites_own_view_lets_our_error_through(
    sentinel_fake: FakeUpstream,
    avaturn: AvaturnOverrides,
    user: Any,
    route: str,
    fault: dict[str, Any],
) -> None:
    # The Python API page shows services.start_session()/end_session() called from a
    # site's own view; an error it does not catch reaches Django's error page,
    # which prints every frame's variables, those of the exception's cause too.
    started = services.start_session(user)
    if route == "refused":
        avaturn(API_URL=f"http://127.0.0.1:{closed_port()}")
    else:
        sentinel_fake.fail(route, **fault)
    page = ""
    try:
        if route in (OPENAI_CLIENT_SECRET, AVATURN_CREATE):
            services.start_session(user)
        else:
            services.end_session(started.session, reason=EndReason.CLIENT)
    except AvaturnError:
        page = _debug_page()
    assert "Traceback" in page  # it failed, and the page shows where
    secrets = [secret.value for secret in sentinel_fake.secrets_issued.values()]
    assert secrets  # the start above minted one: the sweep below is not vacuous
    for credential in (*SENTINELS, *secrets):
        assert credential not in page


def _hook_quoting_the_keys(*args: Any) -> Any:
    raise RuntimeError(f"the site's code quoted {SENTINEL_AVATURN_KEY} and {SENTINEL_HEADER}")


@pytest.mark.parametrize("setting", ["SESSION_CONFIG_HOOK", "QUOTA_HOOK", "EXTERNAL_ENGINE"])
def test_no_credential_on_a_debug_page_when_a_sites_hook_fails_in_its_own_view(
    sentinel_fake: FakeUpstream,
    avaturn: AvaturnOverrides,
    settings: Any,
    user: Any,
    caplog: pytest.LogCaptureFixture,
    setting: str,
) -> None:
    """The hook's exception is logged, scrubbed, by the package; what propagates to a
    site's view that calls start_session() and lets it through carries none of it:
    Django's debug page, its error e-mails and its request log print a cause chain.
    (No local of this test holds a key: the page shows this frame's locals too.)"""
    hook = "tests.test_security._hook_quoting_the_keys"
    if setting == "EXTERNAL_ENGINE":
        avaturn(ENGINE="external", EXTERNAL_ENGINE={**settings.AVATURN[setting], "HOOK": hook})
    else:
        avaturn(**{setting: hook})
    try:
        services.start_session(user)
    except AvaturnError:
        reporter = ExceptionReporter(RequestFactory().get("/a-sites-own-view/"), *sys.exc_info())
        page = reporter.get_traceback_html()
        frames = [frame["function"] for frame in reporter.get_traceback_frames()]
        chain = "".join(traceback.format_exception(*sys.exc_info()))
    assert "NotConfigured" in page
    # The site's exception is not chained: no frame of the hook's, no message of its.
    assert "_hook_quoting_the_keys" not in frames
    assert "RuntimeError: the site" not in chain
    for credential in SENTINELS:
        assert credential not in page + chain
    # The package's own log line has it, scrubbed.
    assert "the site's code quoted [redacted] and [redacted]" in caplog.text
    assert SENTINEL_AVATURN_KEY not in caplog.text


def test_a_hook_whose_import_fails_quoting_a_key_is_reported_without_it(
    sentinel_fake: FakeUpstream, avaturn: AvaturnOverrides, user: Any
) -> None:
    """Python's own reason is repeated (it names modules); a site's own ImportError is not.

    Unchained, so an error page or tracker that prints the cause chain does
    not print the site's ImportError either.
    """
    avaturn(SESSION_CONFIG_HOOK="tests.hook_nowhere.hook")
    nowhere = r"cannot be imported: No module named 'tests\.hook_nowhere'"
    with pytest.raises(NotConfigured, match=nowhere):
        services.start_session(user)
    avaturn(SESSION_CONFIG_HOOK="tests.hook_failing_import.hook")
    with pytest.raises(NotConfigured) as caught:
        services.start_session(user)
    assert str(caught.value).endswith("cannot be imported: its import raised ImportError")
    chain = "".join(traceback.format_exception(caught.value))
    assert "settings_local" not in chain
    assert "direct cause" not in chain and "During handling" not in chain
    for credential in SENTINELS:
        assert credential not in chain


def test_every_logger_of_the_package_scrubs_its_records() -> None:
    """A module that took a plain ``logging.getLogger`` would log its tracebacks unscrubbed."""
    import importlib
    import pkgutil

    import django_avaturn
    from django_avaturn.logs import ScrubSecrets

    loggers: dict[str, logging.Logger] = {}
    for module_info in pkgutil.walk_packages(django_avaturn.__path__, "django_avaturn."):
        if ".migrations." in module_info.name:
            continue
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if isinstance(value, logging.Logger) and value.name.startswith("django_avaturn"):
                loggers[value.name] = value
    assert len(loggers) >= 20
    unscrubbed = [
        name
        for name, logger in loggers.items()
        if not any(isinstance(f, ScrubSecrets) for f in logger.filters)
    ]
    assert unscrubbed == []
