"""The session API, end to end through DRF, the service layer and both upstream clients."""

from __future__ import annotations

import io
import logging
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.urls import reverse
from rest_framework.permissions import BasePermission
from rest_framework.throttling import BaseThrottle

from django_avaturn.models import EndReason, Session, SessionStatus
from django_avaturn.sessions import statements
from tests.helpers import (
    KEYS,
    LIST_URL,
    AvaturnOverrides,
    csrf_delete,
    csrf_post,
    csrf_token,
    live,
)

pytestmark = pytest.mark.django_db(transaction=True)


# A dict that holds itself: no JSON at all.
SELF_HOLDING: dict[str, Any] = {"type": "function"}
SELF_HOLDING["parameters"] = SELF_HOLDING


def assert_no_keys(text: str) -> None:
    for key in KEYS:
        assert key not in text


def test_url_names() -> None:
    assert reverse("django_avaturn:session-list") == LIST_URL
    assert reverse("django_avaturn:session-detail", kwargs={"session_id": "a"}) == (
        "/avaturn/sessions/a/"
    )
    assert reverse("django_avaturn:session-heartbeat", kwargs={"session_id": "a"}) == (
        "/avaturn/sessions/a/heartbeat/"
    )


def test_every_answer_is_no_store_options_and_errors_included(
    api_client: Any, upstream: Any
) -> None:
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    detail = f"{LIST_URL}{session_id}/"
    answers = [
        api_client.options(LIST_URL),
        api_client.options(detail),
        api_client.get(LIST_URL),
        api_client.get(detail),
        api_client.get(f"{LIST_URL}nobody/"),  # 404
        api_client.put(detail),  # 405 (and 403 without CSRF: either is an answer)
        csrf_post(api_client, f"{detail}heartbeat/", {}),
        csrf_delete(api_client, detail),
        api_client.get("/avaturn/usage/"),
    ]
    assert [a["Cache-Control"] for a in answers] == ["no-store"] * len(answers)


def test_start_returns_only_what_the_browser_needs(
    api_client: Any, upstream: Any, user: Any
) -> None:
    response = csrf_post(api_client, LIST_URL, {})

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"session_id", "token", "expires_at", "api_host", "engine"}
    assert body["session_id"] == "av-sess-1"
    assert body["token"] == "av-token-1"
    assert body["api_host"] == "https://avaturn.test"
    assert response["Cache-Control"] == "no-store"
    assert_no_keys(response.content.decode())
    assert "ek_test_secret" not in response.content.decode()

    row = Session.objects.get()
    assert (row.session_id, row.user, row.status) == ("av-sess-1", user, SessionStatus.LIVE)
    assert (row.model, row.voice) == ("gpt-realtime", "marin")
    assert row.expires_at is not None and row.started_at is not None

    # The secret OpenAI minted went to Avaturn and nowhere else.
    sent = upstream.avaturn.created[0]
    assert sent["conversation_engine"] == {
        "type": "openai-realtime",
        "client_secret": "ek_test_secret_0001_abcdef",
    }
    assert sent["max_duration"] == 3600 and sent["user_absent_timeout"] == 60
    openai_request = upstream.openai.requests[0]
    assert openai_request.headers["authorization"] == f"Bearer {KEYS[1]}"
    assert str(openai_request.url) == "https://openai.test/v1/realtime/client_secrets"
    assert upstream.openai.sent_json() == {
        "expires_after": {"anchor": "created_at", "seconds": 600},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "You are a friendly assistant. Keep your answers short and spoken.",
            "audio": {"output": {"voice": "marin"}},
        },
    }
    avaturn_request = upstream.avaturn.create_calls()[0].request
    assert avaturn_request.headers["Authorization"] == f"Bearer {KEYS[0]}"
    assert avaturn_request.headers["User-Agent"].startswith("django-avaturn/")


def test_start_sends_the_whole_realtime_session_to_openai_verbatim(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    # Nested objects, a tool's JSON schema, nulls and the string "inf" for a
    # token limit: all reach OpenAI exactly as the settings wrote them.
    extra = {
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                "transcription": None,
            },
            "output": {"speed": 1.1},
        },
        "tools": [
            {
                "type": "function",
                "name": "lookup_order",
                "description": "Find an order.",
                "parameters": {
                    "type": "object",
                    "properties": {"number": {"type": "string", "minLength": 1}},
                    "required": ["number"],
                    "additionalProperties": False,
                },
            }
        ],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
    }
    avaturn(REALTIME_SESSION=extra)

    assert csrf_post(api_client, LIST_URL, {}).status_code == 201

    sent = upstream.openai.sent_json()
    assert sent["session"] == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You are a friendly assistant. Keep your answers short and spoken.",
        **extra,
        "audio": {
            "input": extra["audio"]["input"],
            "output": {"voice": "marin", "speed": 1.1},
        },
    }
    assert sent["expires_after"] == {"anchor": "created_at", "seconds": 600}


def test_a_session_written_with_the_sdks_own_types_is_sent_as_their_json(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    """The SDK's models, a lazy translation string and a tuple: as the SDK would send them."""
    from django.core.checks import run_checks
    from django.utils.translation import gettext_lazy
    from openai.types.realtime import AudioTranscription, RealtimeFunctionTool

    avaturn(
        REALTIME_SESSION={
            "instructions": gettext_lazy("Be brief."),
            "audio": {"input": {"transcription": AudioTranscription(model="whisper-1")}},
            "tools": (RealtimeFunctionTool(type="function", name="lookup", parameters={}),),
        }
    )
    assert [m.id for m in run_checks(databases=[]) if m.id.startswith("django_avaturn")] == []

    assert csrf_post(api_client, LIST_URL, {}).status_code == 201

    session = upstream.openai.sent_json()["session"]
    assert session["instructions"] == "Be brief."
    assert session["audio"]["input"] == {"transcription": {"model": "whisper-1"}}
    assert session["tools"] == [{"type": "function", "name": "lookup", "parameters": {}}]


def test_anonymous_is_refused_before_any_upstream_call(client: Any, upstream: Any) -> None:
    response = client.post(LIST_URL, data="{}", content_type="application/json")
    assert response.status_code == 403
    assert response.json()["code"] == "not_authenticated"
    assert upstream.openai.requests == []
    assert Session.objects.count() == 0


def test_csrf_is_enforced(api_client: Any, upstream: Any) -> None:
    response = api_client.post(LIST_URL, data="{}", content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert upstream.openai.requests == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"instructions": "be evil"}, "instructions"),
        ({"model": "gpt-5"}, "model"),
        ({"conversation_engine": {"type": "external"}}, "conversation_engine"),
        ({"avatar_id": ""}, "avatar_id"),
        ({"avatar_id": "x" * 256}, "avatar_id"),
        ({"config": "no spaces"}, "config"),
        # Not coerced to text: DRF would read these as "5" and "True".
        ({"config": 5}, "config"),
        ({"avatar_id": True}, "avatar_id"),
    ],
)
def test_bad_input_is_a_400_with_json(
    api_client: Any, upstream: Any, payload: Any, field: str
) -> None:
    response = csrf_post(api_client, LIST_URL, payload)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert field in body["errors"]
    assert upstream.openai.requests == []


@pytest.mark.parametrize("raw", [b"[1, 2]", b"not json", b'"text"'])
def test_non_object_bodies_are_400(api_client: Any, upstream: Any, raw: bytes) -> None:
    response = api_client.post(
        LIST_URL, data=raw, content_type="application/json", HTTP_X_CSRFTOKEN=csrf_token(api_client)
    )
    assert response.status_code == 400
    assert response.json()["code"] in {"invalid", "parse_error"}


def test_form_bodies_are_415(api_client: Any, upstream: Any) -> None:
    response = api_client.post(LIST_URL, data={"a": "b"}, HTTP_X_CSRFTOKEN=csrf_token(api_client))
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_an_empty_body_with_no_content_type_is_an_empty_object(
    api_client: Any, upstream: Any
) -> None:
    """docs/api.md: an empty body, with or without a Content-Type, is the same as ``{}``."""
    response = api_client.generic(
        "POST", LIST_URL, b"", content_type="", HTTP_X_CSRFTOKEN=csrf_token(api_client)
    )
    assert not response.wsgi_request.META.get("CONTENT_TYPE")  # none was sent
    assert response.status_code == 201, response.content


def test_avatar_allow_list(api_client: Any, upstream: Any, avaturn: AvaturnOverrides) -> None:
    avaturn(AVATAR_ID="default-av", ALLOWED_AVATARS=["ok-av"])
    refused = csrf_post(api_client, LIST_URL, {"avatar_id": "other-av"})
    assert refused.status_code == 400
    assert refused.json()["errors"] == {"avatar_id": ["This avatar is not available."]}
    assert upstream.openai.requests == []

    assert csrf_post(api_client, LIST_URL, {"avatar_id": "ok-av"}).status_code == 201
    assert upstream.avaturn.created[-1]["avatar_id"] == "ok-av"
    # The default avatar is always allowed, chosen or not.
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    assert upstream.avaturn.created[-1]["avatar_id"] == "default-av"


def test_an_allow_list_given_as_a_string_refuses_starts(
    api_client: Any, upstream: Any, settings: Any
) -> None:
    # A string is not split into its characters: "a" is not an allowed avatar.
    settings.AVATURN = {**settings.AVATURN, "ALLOWED_AVATARS": "avatar-1"}
    for body in ({"avatar_id": "a"}, {"avatar_id": "avatar-1"}, {}):
        response = csrf_post(api_client, LIST_URL, body)
        assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert upstream.openai.requests == []
    assert upstream.avaturn.created == []
    assert not Session.objects.exists()


def test_list_shows_own_sessions_without_tokens(
    api_client: Any, upstream: Any, other_user: Any
) -> None:
    Session.objects.create(user=other_user, session_id="theirs", status=SessionStatus.LIVE)
    csrf_post(api_client, LIST_URL, {})

    response = api_client.get(LIST_URL)
    assert response.status_code == 200
    body = response.json()
    assert [s["session_id"] for s in body] == ["av-sess-1"]
    assert "token" not in body[0]
    assert "av-token-1" not in response.content.decode()


def test_delete_ends_own_session_once(api_client: Any, upstream: Any) -> None:
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    url = f"/avaturn/sessions/{session_id}/"

    first = csrf_delete(api_client, url)
    second = csrf_delete(api_client, url)

    assert (first.status_code, second.status_code) == (204, 204)
    assert upstream.avaturn.deleted == [session_id]
    row = Session.objects.get(session_id=session_id)
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.CLIENT)
    assert row.ended_at is not None


def test_other_users_session_is_404(api_client: Any, upstream: Any, other_user: Any) -> None:
    Session.objects.create(user=other_user, session_id="theirs", status=SessionStatus.LIVE)
    assert csrf_delete(api_client, "/avaturn/sessions/theirs/").status_code == 404
    assert api_client.get("/avaturn/sessions/theirs/").status_code == 404
    assert csrf_post(api_client, "/avaturn/sessions/theirs/heartbeat/").status_code == 404
    assert upstream.avaturn.deleted == []
    assert Session.objects.get(session_id="theirs").status == SessionStatus.LIVE


def test_heartbeat_records_last_seen(api_client: Any, upstream: Any) -> None:
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    response = csrf_post(api_client, f"/avaturn/sessions/{session_id}/heartbeat/")
    assert response.status_code == 204
    assert Session.objects.get(session_id=session_id).last_seen_at is not None

    csrf_delete(api_client, f"/avaturn/sessions/{session_id}/")
    ended = csrf_post(api_client, f"/avaturn/sessions/{session_id}/heartbeat/")
    assert ended.status_code == 409
    assert ended.json()["code"] == "session_ended"


def test_the_callers_row_is_read_where_it_was_written_not_from_a_replica(
    api_client: Any, upstream: Any, user: Any, settings: Any
) -> None:
    """Stop pressed a moment after Start: a lagging replica may not have the row yet."""
    live(user, "fresh")
    settings.DATABASE_ROUTERS = ["tests.routers.ReadsFromAReplica"]
    detail = f"{LIST_URL}fresh/"

    assert api_client.get(detail).status_code == 200
    assert csrf_post(api_client, f"{detail}heartbeat/").status_code == 204
    assert csrf_delete(api_client, detail).status_code == 204
    assert upstream.avaturn.deleted == ["fresh"]
    assert Session.objects.using("default").get(session_id="fresh").status == SessionStatus.ENDED
    # The refusals too: an ended row's heartbeat, a Stop pressed again.
    refused = csrf_post(api_client, f"{detail}heartbeat/")
    assert (refused.status_code, refused.json()["code"]) == (409, "session_ended")
    assert csrf_delete(api_client, detail).status_code == 204
    assert csrf_post(api_client, f"{LIST_URL}nobody/heartbeat/").status_code == 404


def test_a_replaced_sessions_heartbeat_says_it_was_replaced(api_client: Any, upstream: Any) -> None:
    first = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201  # end_oldest: replaces it
    answer = csrf_post(api_client, f"/avaturn/sessions/{first}/heartbeat/")
    assert (answer.status_code, answer.json()["code"]) == (409, "session_replaced")


def test_cap_refuse_policy_is_409_and_spends_nothing(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(ON_SESSION_LIMIT="refuse")
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201
    response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 409
    assert response.json()["code"] == "session_limit_reached"
    assert len(upstream.openai.requests) == 1
    assert Session.objects.live().count() == 1


def test_cap_end_oldest_policy_replaces(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(MAX_LIVE_SESSIONS_PER_USER=2)
    ids = [csrf_post(api_client, LIST_URL, {}).json()["session_id"] for _ in range(3)]

    assert upstream.avaturn.deleted == [ids[0]]
    live = set(Session.objects.live().values_list("session_id", flat=True))
    assert live == {ids[1], ids[2]}
    oldest = Session.objects.get(session_id=ids[0])
    assert (oldest.status, oldest.end_reason) == (SessionStatus.ENDED, EndReason.REPLACED)


def test_cap_end_oldest_fails_safe_when_the_old_session_cannot_be_ended(
    api_client: Any, upstream: Any
) -> None:
    first = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    upstream.avaturn.on_delete(500, {"detail": "boom"})

    response = csrf_post(api_client, LIST_URL, {})

    assert response.status_code == 502
    assert response.json()["code"] == "upstream_error"
    # The old one is still recorded live (the expiry command will retry), no new one was made.
    assert list(Session.objects.live().values_list("session_id", flat=True)) == [first]
    assert len(upstream.avaturn.created) == 1


def test_one_replaced_session_failing_to_end_does_not_strand_the_others(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    # A lowered cap: the next start replaces the two oldest of three.
    avaturn(MAX_LIVE_SESSIONS_PER_USER=3)
    ids = [csrf_post(api_client, LIST_URL, {}).json()["session_id"] for _ in range(3)]
    avaturn(MAX_LIVE_SESSIONS_PER_USER=2, TERMINATE_RETRIES=0)
    failed_once: list[str] = []

    def first_fails(request: Any) -> tuple[int, dict[str, str], str]:
        # The oldest one's, whichever of the two (sent together) arrives first.
        if ids[0] in request.url and not failed_once:
            failed_once.append(request.url)
            return 500, {}, '{"detail": "boom"}'
        return upstream.avaturn._delete(request)

    upstream.avaturn.on_delete_call(first_fails)
    response = csrf_post(api_client, LIST_URL, {})

    assert response.status_code == 502
    # The one Avaturn would not end stays live for a retry; the other is ended
    # now, not left ending (and billing) until the expiry command's stuck sweep.
    assert upstream.avaturn.deleted == [ids[1]]
    statuses = dict(Session.objects.values_list("session_id", "status"))
    assert statuses[ids[0]] == SessionStatus.LIVE
    assert statuses[ids[1]] == SessionStatus.ENDED


@pytest.mark.parametrize(
    ("name", "value", "method"),
    [
        ("API_KEY", None, "post"),  # and AVATURN_API_KEY unset
        ("START_THROTTLE_RATE", "10/fortnight", "post"),
        ("OPENAI_MAX_RETRIES", "1", "post"),
        ("AVATURN_TIMEOUT", None, "post"),
        ("SESSIONS_ENABLED", "False", "post"),
        ("SESSION_LIST_LIMIT", None, "get"),
        # Both used to fail inside a client's constructor, the key in its frame,
        # shown on Django's debug page.
        ("API_URL", "http://[::1", "post"),
        ("OPENAI_HTTP_CLIENT", "tests.test_api.async_http_client", "post"),
        ("API_KEY", "two words", "post"),
        ("REALTIME_SESSION", {"audio": {"output": "marin"}}, "post"),
        # Not JSON: each failed inside the SDK, once the start had reserved its slot.
        ("REALTIME_SESSION", {"temperature": Decimal("0.8")}, "post"),
        ("REALTIME_SESSION", {"temperature": float("nan")}, "post"),
        ("REALTIME_SESSION", {"tools": [SELF_HOLDING]}, "post"),
        ("OPENAI_TIMEOUT", float("inf"), "post"),
        # Was handed to the browser unchecked, after the session was created.
        ("SDK_API_HOST", "api.avaturn.live", "post"),
        ("VOICE", 123, "post"),
        # Dotted paths that do not import (E004) were HTML 500s, the first
        # before DRF's exception handling even began.
        ("AUTHENTICATION_CLASSES", ["nowhere.Authentication"], "post"),
        ("AUTHENTICATION_CLASSES", ["nowhere.Authentication"], "get"),
        ("PERMISSION_CLASSES", ["nowhere.Permission"], "get"),
        ("THROTTLE_CLASSES", ["nowhere.Throttle"], "post"),
        ("SESSION_CONFIG_HOOK", "nowhere.hook", "post"),
        ("QUOTA_HOOK", "nowhere.hook", "post"),
        ("PERMISSION_CLASSES", ["django_avaturn.conf.DEFAULTS"], "get"),  # not callable
        # Once sent as str(5), and split into characters.
        ("AVATAR_ID", 5, "post"),
        ("ALLOWED_AVATARS", "avatar-1", "post"),
    ],
)
def test_a_missing_or_malformed_setting_is_a_json_503_and_spends_nothing(
    api_client: Any,
    upstream: Any,
    avaturn: AvaturnOverrides,
    monkeypatch: Any,
    name: str,
    value: Any,
    method: str,
) -> None:
    # But for the missing key, each of these was once a 500 (int(), float(), DRF's
    # rate parser or a client's constructor) or was read loosely.
    from django_avaturn.upstream.clients import reset_clients

    monkeypatch.delenv("AVATURN_API_KEY", raising=False)
    avaturn(**{name: value})
    reset_clients()
    response = csrf_post(api_client, LIST_URL, {}) if method == "post" else api_client.get(LIST_URL)
    assert response.status_code == 503
    assert response.json() == {
        "code": "not_configured",
        "detail": "The avatar service is not configured.",
    }
    assert upstream.openai.requests == []
    assert Session.objects.count() == 0


def hook_with_a_decimal(request: Any, config: str | None) -> dict[str, Any]:
    return {"realtime_session": {"temperature": Decimal("0.8")}}


def test_a_hooks_session_that_is_not_json_ends_nothing_and_starts_nothing(
    api_client: Any, upstream: Any, user: Any, avaturn: AvaturnOverrides
) -> None:
    """It was a 500 after the start had ended the user's live session (end_oldest)."""
    live(user, "earlier")
    avaturn(SESSION_CONFIG_HOOK="tests.test_api.hook_with_a_decimal")

    response = csrf_post(api_client, LIST_URL, {})

    assert (response.status_code, response.json()["code"]) == (503, "not_configured")
    assert upstream.openai.requests == [] and upstream.avaturn.deleted == []
    assert list(Session.objects.values_list("session_id", "status")) == [
        ("earlier", SessionStatus.LIVE)
    ]


def async_http_client() -> Any:
    import httpx2

    return httpx2.AsyncClient()


def test_a_key_with_a_trailing_newline_is_sent_without_it(
    api_client: Any, upstream: Any, settings: Any, avaturn: AvaturnOverrides
) -> None:
    # As read from a secret file: sent as is, it is an illegal header whose
    # error message quotes it (and HTTP libraries log that message).
    from django_avaturn.upstream.clients import reset_clients

    avaturn(
        API_KEY=settings.AVATURN["API_KEY"] + "\n",
        OPENAI_API_KEY=settings.AVATURN["OPENAI_API_KEY"] + "\n",
    )
    reset_clients()
    assert csrf_post(api_client, LIST_URL, {}).status_code == 201


def test_throttle_applies_to_starts_only(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    from django.core.cache import cache

    cache.clear()
    avaturn(START_THROTTLE_RATE="2/minute", MAX_LIVE_SESSIONS_PER_USER=5)
    statuses = [csrf_post(api_client, LIST_URL, {}).status_code for _ in range(3)]
    assert statuses == [201, 201, 429]
    throttled = csrf_post(api_client, LIST_URL, {})
    assert throttled.json()["code"] == "throttled"
    assert int(throttled["Retry-After"]) > 0
    assert api_client.get(LIST_URL).status_code == 200
    cache.clear()


def test_a_throttle_whose_cache_is_down_answers_503_json_and_spends_nothing(
    api_client: Any,
    upstream: Any,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    avaturn: AvaturnOverrides,
) -> None:
    pytest.importorskip("redis")
    from django.core.cache import caches

    avaturn(START_THROTTLE_RATE="10/minute")
    # A Redis nobody listens on: every cache call fails to connect.
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
        },
    }
    try:
        response = csrf_post(api_client, LIST_URL, {})
    finally:
        caches["default"].close()
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "unavailable", response.json()
    assert upstream.openai.requests == [] and upstream.avaturn.created == []
    assert "throttle" in caplog.text.lower()


def test_permission_classes_setting_is_read_per_request(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(PERMISSION_CLASSES=["rest_framework.permissions.IsAdminUser"])
    response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


class RaisingPermission(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        raise RuntimeError("the plan service is down")


class DjangoDenyingPermission(BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        raise DjangoPermissionDenied  # as Django code often refuses


class VagueThrottle(BaseThrottle):
    def allow_request(self, request: Any, view: Any) -> bool:
        return False

    def wait(self) -> Any:
        return "soon"  # not seconds: DRF cannot compare it


@pytest.mark.parametrize(
    ("setting", "path", "status", "code"),
    [
        ("PERMISSION_CLASSES", "tests.test_api.RaisingPermission", 503, "not_configured"),
        ("PERMISSION_CLASSES", "tests.test_api.DjangoDenyingPermission", 403, "permission_denied"),
        ("THROTTLE_CLASSES", "tests.test_api.VagueThrottle", 503, "not_configured"),
    ],
)
def test_a_sites_permission_or_throttle_class_that_fails_gets_a_json_answer(
    api_client: Any,
    upstream: Any,
    avaturn: AvaturnOverrides,
    caplog: pytest.LogCaptureFixture,
    setting: str,
    path: str,
    status: int,
    code: str,
) -> None:
    """Not Django's 500 page: every answer of the API is JSON, and a failing class of the
    site's is answered as a failing hook is, with its traceback in the log."""
    avaturn(**{setting: [path]})
    response = csrf_post(api_client, LIST_URL, {})
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert upstream.openai.requests == []
    if status == 503:
        record = next(r for r in caplog.records if r.getMessage().startswith("A class of"))
        first, _, rest = record.getMessage().partition("\n")
        assert first == f"A class of AVATURN['{setting}'] raised"
        assert rest.startswith("Traceback (most recent call last)")  # as text, scrubbed
        assert record.exc_info is None


def test_inactive_user_cannot_start(api_client: Any, user: Any, upstream: Any) -> None:
    user.is_active = False
    user.save()
    response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 403
    assert upstream.openai.requests == []


def test_upstream_failure_logs_are_key_free(
    api_client: Any, upstream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.avaturn.on_create(401, {"detail": f"bad key {KEYS[0]}", "echo": f"Bearer {KEYS[0]}"})
    with caplog.at_level(logging.DEBUG):
        response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 502
    assert_no_keys(response.content.decode())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "avaturn create session failed (401)" in text
    assert_no_keys(text)
    row = Session.objects.get()
    assert row.status == SessionStatus.FAILED
    assert "401" in row.end_detail
    assert_no_keys(row.end_detail)


def raising_hook(*args: Any) -> Any:
    raise AttributeError("'User' object has no attribute 'get_short_name'")


def test_a_raising_session_config_hook_is_a_json_503(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by schemathesis: the example's hook assumed a user model with get_short_name().
    avaturn(SESSION_CONFIG_HOOK="tests.test_api.raising_hook")
    response = csrf_post(api_client, LIST_URL, {})
    assert response.status_code == 503
    assert response.json() == {
        "code": "not_configured",
        "detail": "The avatar service is not configured.",
    }
    assert upstream.openai.requests == []
    hook_record = next(
        r for r in caplog.records if r.getMessage().startswith("SESSION_CONFIG_HOOK raised\n")
    )
    # The site's traceback reaches its log as text, scrubbed (see the next test), with no
    # exception object: its frames' variables would reach a handler that reads them.
    assert "in raising_hook" in hook_record.getMessage()
    assert hook_record.exc_info is None


def hook_quoting_the_key(*args: Any) -> Any:
    raise RuntimeError(f"billing refused key={KEYS[0]} (and Bearer {KEYS[1]}-x)")


@pytest.mark.parametrize("setting", ["SESSION_CONFIG_HOOK", "QUOTA_HOOK"])
def test_a_key_in_a_hooks_exception_reaches_no_log_line(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides, setting: str
) -> None:
    """The site's code may quote a key in its exception: every handler, whatever it
    formats (the message, the traceback, or the exception object), gets it scrubbed."""
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    records: list[logging.LogRecord] = []
    handler.addFilter(lambda record: records.append(record) or True)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        avaturn(**{setting: "tests.test_api.hook_quoting_the_key"})
        assert csrf_post(api_client, LIST_URL, {}).status_code == 503
    finally:
        root.removeHandler(handler)
    text = written.getvalue()
    assert f"{setting} raised" in text
    assert "RuntimeError: billing refused key=[redacted]" in text
    assert "in hook_quoting_the_key" in text
    assert_no_keys(text)
    # Nothing left for a handler that formats the exception itself (an error tracker).
    [hook_record] = [r for r in records if r.getMessage().startswith(f"{setting} raised\n")]
    assert hook_record.exc_info is None
    assert "key=[redacted]" in hook_record.getMessage()


def test_a_raising_quota_hook_is_a_json_503(
    api_client: Any, upstream: Any, avaturn: AvaturnOverrides
) -> None:
    avaturn(QUOTA_HOOK="tests.test_api.raising_hook")
    assert csrf_post(api_client, LIST_URL, {}).status_code == 503
    usage = api_client.get("/avaturn/usage/")
    assert usage.status_code == 503
    assert usage.json()["code"] == "not_configured"
    assert upstream.openai.requests == []


@pytest.mark.parametrize("debug", [False, True])
def test_a_path_missing_its_slash_is_a_json_404_that_names_the_right_one(
    api_client: Any, settings: Any, debug: bool
) -> None:
    # Under DEBUG, Django's APPEND_SLASH raises for a POST (an HTML 500).
    settings.DEBUG = debug
    response = api_client.post("/avaturn/sessions", data="{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "/avaturn/sessions/" in response.json()["detail"]
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/avaturn/sessions/abc/nothing/", "/avaturn/usage/x"])
def test_an_unknown_path_under_the_api_is_a_json_404(api_client: Any, path: str) -> None:
    response = api_client.get(path)
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
    assert "slash" not in response.json()["detail"]


def test_a_stop_costs_two_statements_on_the_sessions_table(api_client: Any, upstream: Any) -> None:
    """Find and claim the caller's row in one, finish it: the benchmarks' end path."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    with CaptureQueriesContext(connection) as captured:
        assert csrf_delete(api_client, f"/avaturn/sessions/{session_id}/").status_code == 204
    ours = [q["sql"] for q in captured.captured_queries if "django_avaturn_session" in q["sql"]]
    assert [sql.split()[0] for sql in ours] == ["UPDATE", "UPDATE"], ours
    assert "RETURNING" in ours[0]
    assert upstream.avaturn.deleted == [session_id]


def test_a_repeated_stop_costs_two_statements_and_changes_nothing(
    api_client: Any, upstream: Any
) -> None:
    """A claim that finds no row to claim, then the read that says it is over."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    url = f"/avaturn/sessions/{session_id}/"
    assert csrf_delete(api_client, url).status_code == 204
    before = Session.objects.values().get(session_id=session_id)
    with CaptureQueriesContext(connection) as captured:
        assert csrf_delete(api_client, url).status_code == 204
    ours = [q["sql"] for q in captured.captured_queries if "django_avaturn_session" in q["sql"]]
    expected = ["UPDATE", "SELECT"] if statements.updates_return_rows() else ["SELECT"]
    assert [sql.split()[0] for sql in ours] == expected, ours
    assert Session.objects.values().get(session_id=session_id) == before
    assert upstream.avaturn.deleted == [session_id]


def test_a_heartbeat_costs_one_statement_on_the_sessions_table(
    api_client: Any, upstream: Any
) -> None:
    """Every live session's widget sends one every HEARTBEAT_INTERVAL."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    heartbeat = f"/avaturn/sessions/{session_id}/heartbeat/"
    with CaptureQueriesContext(connection) as captured:
        assert csrf_post(api_client, heartbeat).status_code == 204
    ours = [q["sql"] for q in captured.captured_queries if "django_avaturn_session" in q["sql"]]
    assert [sql.split()[0] for sql in ours] == ["UPDATE"], ours
    assert Session.objects.get(session_id=session_id).last_seen_at is not None


def test_a_stop_where_an_update_returns_no_rows_reads_then_claims(
    api_client: Any, upstream: Any, monkeypatch: Any
) -> None:
    """A database without ``UPDATE ... RETURNING`` (MySQL): read the row, claim it, finish it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from django_avaturn.sessions import statements

    monkeypatch.setattr(statements, "updates_return_rows", lambda: False)
    session_id = csrf_post(api_client, LIST_URL, {}).json()["session_id"]
    with CaptureQueriesContext(connection) as captured:
        assert csrf_delete(api_client, f"/avaturn/sessions/{session_id}/").status_code == 204
    ours = [q["sql"] for q in captured.captured_queries if "django_avaturn_session" in q["sql"]]
    assert [sql.split()[0] for sql in ours] == ["SELECT", "UPDATE", "UPDATE"], ours
    assert upstream.avaturn.deleted == [session_id]
    row = Session.objects.get(session_id=session_id)
    assert (row.status, row.end_reason) == (SessionStatus.ENDED, EndReason.CLIENT)
