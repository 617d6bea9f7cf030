"""The AVATURN settings object: defaults, overrides, env fallbacks, imports."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from django_avaturn.conf import DEFAULTS, AvaturnSettings, avaturn_settings, sdk_api_host
from django_avaturn.exceptions import NotConfigured
from django_avaturn.sessions.plan import build_plan


def test_every_default_is_returned_when_unset(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("AVATURN_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings.AVATURN = {}
    for name, default in DEFAULTS.items():
        assert avaturn_settings.raw(name) == default, name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("API_URL", "https://eu.avaturn.example"),
        ("MODEL", "gpt-realtime-mini"),
        ("VOICE", "cedar"),
        ("CLIENT_SECRET_TTL", 120),
        ("MAX_DURATION", 900),
        ("USER_ABSENT_TIMEOUT", 15),
        ("MAX_LIVE_SESSIONS_PER_USER", 3),
        ("ON_SESSION_LIMIT", "refuse"),
        ("START_THROTTLE_RATE", "1/hour"),
        ("SDK_URL", "/static/sdk/main.js"),
        ("SDK_INTEGRITY", ""),
        ("WIDGET_INIT_TIMEOUT", 5),
        ("HEARTBEAT_INTERVAL", 10),
    ],
)
def test_override_settings_reaches_every_setting(name: str, value: Any) -> None:
    before = getattr(avaturn_settings, name)
    with override_settings(AVATURN={name: value}):
        assert getattr(avaturn_settings, name) == value
    assert getattr(avaturn_settings, name) == before


def test_unknown_setting_raises() -> None:
    with pytest.raises(AttributeError, match="Invalid AVATURN setting"):
        avaturn_settings.NOPE  # noqa: B018


def test_keys_fall_back_to_the_environment(settings: Any, monkeypatch: Any) -> None:
    settings.AVATURN = {}
    monkeypatch.setenv("AVATURN_API_KEY", "from-env-avaturn")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env-openai")
    assert avaturn_settings.API_KEY == "from-env-avaturn"
    assert avaturn_settings.OPENAI_API_KEY == "from-env-openai"
    settings.AVATURN = {"API_KEY": "from-settings"}
    assert avaturn_settings.API_KEY == "from-settings"


def test_a_key_is_read_anew_each_time_and_stripped(settings: Any, monkeypatch: Any) -> None:
    # Not cached: a rotated environment variable applies without a restart.
    settings.AVATURN = {}
    monkeypatch.setenv("AVATURN_API_KEY", "av-first-0123456789\n")
    assert avaturn_settings.API_KEY == "av-first-0123456789"
    monkeypatch.setenv("AVATURN_API_KEY", "av-second-0123456789")
    assert avaturn_settings.API_KEY == "av-second-0123456789"
    monkeypatch.setenv("AVATURN_API_KEY", "av two words")
    with pytest.raises(NotConfigured, match="holds characters") as refused:
        avaturn_settings.API_KEY  # noqa: B018
    assert "two words" not in str(refused.value)


def test_every_setting_is_typed_for_its_readers() -> None:
    # The annotations mypy reads avaturn_settings.NAME through: one per key of the table.
    assert set(AvaturnSettings.__annotations__) == set(DEFAULTS)


def test_a_valid_value_is_read_once_and_cached(settings: Any) -> None:
    settings.AVATURN = {"MAX_DURATION": 900}
    assert avaturn_settings.MAX_DURATION == 900
    # Changed behind Django's back (no setting_changed): the cached value stands.
    settings.AVATURN["MAX_DURATION"] = "nonsense"
    assert avaturn_settings.MAX_DURATION == 900
    settings.AVATURN = {"MAX_DURATION": 600}  # setting_changed drops the cache
    assert avaturn_settings.MAX_DURATION == 600


def test_an_invalid_value_raises_the_same_error_at_every_read(settings: Any) -> None:
    settings.AVATURN = {"ALLOWED_AVATARS": "avatar-1"}
    messages = set()
    for _ in range(2):
        with pytest.raises(NotConfigured) as refused:
            avaturn_settings.ALLOWED_AVATARS  # noqa: B018
        messages.add(str(refused.value))
    assert messages == {
        'ALLOWED_AVATARS must be a list of non-empty strings, such as ["avatar-1"], not str.'
    }
    settings.AVATURN = {"ALLOWED_AVATARS": ["avatar-1"]}
    assert avaturn_settings.ALLOWED_AVATARS == ("avatar-1",)


def test_values_come_typed_as_their_readers_use_them(settings: Any) -> None:
    from django_avaturn.validation import Quota

    settings.AVATURN = {"QUOTAS": {"minutes_per_day": 30}, "OPENAI_TIMEOUT": 5, "AVATAR_ID": ""}
    assert Quota(minutes_per_day=30) == avaturn_settings.QUOTAS
    assert avaturn_settings.OPENAI_TIMEOUT == 5.0
    assert isinstance(avaturn_settings.OPENAI_TIMEOUT, float)
    assert avaturn_settings.AVATAR_ID is None


def test_repr_never_shows_keys() -> None:
    assert "key" not in repr(avaturn_settings).lower()
    assert "0123456789" not in repr(avaturn_settings)


def test_dotted_paths_are_imported(settings: Any) -> None:
    from rest_framework.permissions import AllowAny

    settings.AVATURN = {"PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]}
    assert [AllowAny] == avaturn_settings.PERMISSION_CLASSES


def test_sdk_api_host_defaults_to_api_url(settings: Any) -> None:
    settings.AVATURN = {"API_URL": "http://127.0.0.1:9/"}
    assert sdk_api_host() == "http://127.0.0.1:9"
    settings.AVATURN = {"API_URL": "http://a", "SDK_API_HOST": "https://proxy.example/"}
    assert sdk_api_host() == "https://proxy.example"
    settings.AVATURN = {"SDK_API_HOST": "proxy.example"}
    with pytest.raises(NotConfigured):
        sdk_api_host()


def test_a_path_that_does_not_import_says_why(settings: Any) -> None:
    settings.AVATURN = {"SESSION_CONFIG_HOOK": "tests.nowhere.hook"}
    with pytest.raises(NotConfigured, match=r"No module named 'tests\.nowhere'"):
        avaturn_settings.SESSION_CONFIG_HOOK  # noqa: B018


def hook_greeting(request: Any, config: str | None) -> dict[str, Any]:
    return {
        "instructions": f"Greet {getattr(request, 'name', 'nobody')} ({config})",
        "realtime_session": {"audio": {"output": {"speed": 1.2}}},
    }


def hook_bad_keys(request: Any, config: str | None) -> dict[str, Any]:
    return {"conversation_engine": "external"}


def hook_not_a_dict(request: Any, config: str | None) -> Any:
    return ["no"]


class FakeRequest:
    name = "Ada"


def test_hook_sets_per_request_config(settings: Any) -> None:
    settings.AVATURN = {
        "SESSION_CONFIG_HOOK": "tests.test_settings.hook_greeting",
        "REALTIME_SESSION": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
    }
    plan = build_plan(request=FakeRequest(), config_name="brief")  # type: ignore[arg-type]
    assert plan.realtime_session == {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "Greet Ada (brief)",
        "audio": {
            "output": {"voice": "marin", "speed": 1.2},
            "input": {"turn_detection": {"type": "semantic_vad"}},
        },
    }
    assert plan.config_name == "brief"


@pytest.mark.parametrize("hook", ["hook_bad_keys", "hook_not_a_dict"])
def test_bad_hook_results_are_configuration_errors(settings: Any, hook: str) -> None:
    settings.AVATURN = {"SESSION_CONFIG_HOOK": f"tests.test_settings.{hook}"}
    with pytest.raises(NotConfigured):
        build_plan()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"CLIENT_SECRET_TTL": 5}, "CLIENT_SECRET_TTL must be 10 to 7200"),
        ({"CLIENT_SECRET_TTL": 7201}, "CLIENT_SECRET_TTL must be 10 to 7200"),
        ({"MAX_DURATION": 59}, "MAX_DURATION must be 60 to 86400"),
        ({"MAX_DURATION": "600"}, "MAX_DURATION must be a whole number"),
        ({"USER_ABSENT_TIMEOUT": 9}, "USER_ABSENT_TIMEOUT must be at least 10"),
        ({"BACKGROUND": "purple"}, "BACKGROUND must be one of"),
        ({"RENDER_MODEL": "alpha"}, "RENDER_MODEL must be one of"),
        ({"RENDER_MODEL": "delta", "RENDER_MODEL_FIELD": "x"}, "RENDER_MODEL_FIELD must be one of"),
        ({"REALTIME_SESSION": {"type": "transcription"}}, '"type" must be "realtime"'),
        ({"REALTIME_SESSION": ["x"]}, "REALTIME_SESSION must be a dict"),
        ({"MODEL": ""}, "MODEL must be a non-empty string"),
    ],
)
def test_plan_validates_ranges(settings: Any, overrides: dict[str, Any], message: str) -> None:
    settings.AVATURN = overrides
    with pytest.raises(NotConfigured, match=message):
        build_plan()


def test_boundaries_are_accepted(settings: Any) -> None:
    settings.AVATURN = {"CLIENT_SECRET_TTL": 10, "MAX_DURATION": 86400, "USER_ABSENT_TIMEOUT": 10}
    plan = build_plan()
    assert plan.client_secret_ttl == 10
    assert plan.avaturn_options == {"max_duration": 86400, "user_absent_timeout": 10}
    settings.AVATURN = {"CLIENT_SECRET_TTL": 7200, "MAX_DURATION": 60}
    assert build_plan().client_secret_ttl == 7200


@pytest.mark.parametrize("field", ["model", "render_model"])
def test_render_model_field_name_is_configurable(settings: Any, field: str) -> None:
    settings.AVATURN = {
        "RENDER_MODEL": "golf",
        "RENDER_MODEL_FIELD": field,
        "BACKGROUND": "transparent",
        "AVATAR_ID": "av-1",
    }
    payload = build_plan().avaturn_payload("ek_secret")
    assert payload[field] == "golf"
    assert payload["background"] == "transparent"
    assert payload["avatar_id"] == "av-1"
    assert payload["conversation_engine"] == {
        "type": "openai-realtime",
        "client_secret": "ek_secret",
    }
