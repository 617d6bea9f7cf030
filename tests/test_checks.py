"""Each system check, compared on its id and message."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core.checks import Error, Warning, run_checks
from django.test import override_settings

from django_avaturn.exceptions import NotConfigured
from django_avaturn.sessions.plan import build_plan
from tests.helpers import AvaturnOverrides


def ids(messages: list[Any]) -> list[str]:
    return sorted(m.id for m in messages if m.id.startswith("django_avaturn."))


def avaturn_messages() -> list[Any]:
    # No database: Django 6.1 gives the model checks every alias when none is
    # named, and a test without database access may be the first to ask.
    return [m for m in run_checks(databases=[]) if m.id.startswith("django_avaturn.")]


def test_test_settings_are_clean() -> None:
    assert avaturn_messages() == []


def test_missing_rest_framework_is_e001(settings: Any) -> None:
    apps = [a for a in settings.INSTALLED_APPS if a != "rest_framework"]
    with override_settings(INSTALLED_APPS=apps):
        messages = avaturn_messages()
    assert messages == [
        Error(
            "django_avaturn needs Django REST framework, but 'rest_framework' is not in "
            "INSTALLED_APPS.",
            hint="Add 'rest_framework' to INSTALLED_APPS.",
            id="django_avaturn.E001",
        )
    ]


def test_avaturn_not_a_dict_is_e002(settings: Any) -> None:
    settings.AVATURN = ["API_KEY"]
    assert ids(avaturn_messages()) == ["django_avaturn.E002"]


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("CARTESIA_API_KEY", "AVATURN['CARTESIA']['API_KEY']"),
        ("EXTERNAL_ENGINE_URL", "AVATURN['EXTERNAL_ENGINE']['URL']"),
        ("TEXT_ECHO_VOICE_ID", "AVATURN['TEXT_ECHO']['VOICE_ID']"),
    ],
)
def test_a_sections_key_written_flat_is_e002_naming_where_it_goes(
    avaturn: AvaturnOverrides, name: str, meant: str
) -> None:
    avaturn(**{name: "x"})
    (message,) = avaturn_messages()
    assert message.id == "django_avaturn.E002"
    assert message.hint.startswith(f"Did you mean {meant}? ")


def test_unknown_setting_is_e002_with_the_closest_name(avaturn: AvaturnOverrides) -> None:
    avaturn(MAX_DURATON=5, COLOUR="red")
    assert avaturn_messages() == [
        Error(
            "AVATURN['COLOUR'] is not a django-avaturn setting.",
            hint="Check the spelling. See the Settings page of django-avaturn's documentation.",
            id="django_avaturn.E002",
        ),
        Error(
            "AVATURN['MAX_DURATON'] is not a django-avaturn setting.",
            hint="Did you mean 'MAX_DURATION'? See the Settings page of django-avaturn's "
            "documentation.",
            id="django_avaturn.E002",
        ),
    ]


def test_avaturn_settings_outside_the_dict_are_w008(settings: Any) -> None:
    # Ignored by the app: the key below is not used, so the message must say where it goes.
    settings.AVATURN_API_KEY = "av-outside-0123456789"
    settings.AVATURN_MAX_DURATION = 600
    settings.AVATURN_LOOK = "ignored: not one of ours"
    assert avaturn_messages() == [
        Warning(
            "settings.AVATURN_API_KEY is not read by django-avaturn, whose settings are in "
            "the AVATURN dict.",
            hint="Set AVATURN['API_KEY'] or the AVATURN_API_KEY environment variable instead.",
            id="django_avaturn.W008",
        ),
        Warning(
            "settings.AVATURN_MAX_DURATION is not read by django-avaturn, whose settings are "
            "in the AVATURN dict.",
            hint="Set AVATURN['MAX_DURATION'] instead.",
            id="django_avaturn.W008",
        ),
    ]
    assert "av-outside" not in repr(avaturn_messages())


def test_openai_api_key_in_settings_is_w008_only_while_the_app_has_no_key(
    settings: Any, monkeypatch: Any
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # A site may hold its own OpenAI key under this name: only a missing key makes it ours.
    settings.OPENAI_API_KEY = "sk-site-own-0123456789"
    assert avaturn_messages() == []
    settings.AVATURN = {k: v for k, v in settings.AVATURN.items() if k != "OPENAI_API_KEY"}
    messages = avaturn_messages()
    assert ids(messages) == ["django_avaturn.W002", "django_avaturn.W008"]
    assert messages[0] == Warning(
        "settings.OPENAI_API_KEY is not read by django-avaturn, whose settings are in the "
        "AVATURN dict.",
        hint="Set AVATURN['OPENAI_API_KEY'] or the OPENAI_API_KEY environment variable instead.",
        id="django_avaturn.W008",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLIENT_SECRET_TTL", 9),
        ("CLIENT_SECRET_TTL", 7201),
        ("CLIENT_SECRET_TTL", "600"),
        ("MAX_DURATION", 59),
        ("MAX_DURATION", 86401),
        ("USER_ABSENT_TIMEOUT", 5),
        ("MAX_LIVE_SESSIONS_PER_USER", 0),
        ("MAX_LIVE_SESSIONS_PER_USER", True),
        ("ON_SESSION_LIMIT", "queue"),
        ("BACKGROUND", "green"),
        ("RENDER_MODEL", "zeta"),
        ("RENDER_MODEL_FIELD", "renderer"),
        ("API_URL", None),
        ("REALTIME_SESSION", "audio"),
        ("REALTIME_SESSION", {"type": "transcription"}),
        ("ALLOWED_AVATARS", "a,b"),
        ("OPENAI_TIMEOUT", "10"),
        ("SDK_INTEGRITY", None),
        ("MAX_LIVE_SESSIONS", 0),
        ("QUOTA_WINDOW", "week"),
        ("QUOTAS", {"minutes": 5}),
        ("QUOTAS", {"sessions_per_day": -1}),
        ("QUOTAS", [5]),
        ("TRANSCRIPT_MAX_LENGTH", 0),
        ("TRANSCRIPT_MAX_LINES", 0),
        ("TRANSCRIPT_MAX_BYTES", "2MB"),
        ("TRANSCRIPT_THROTTLE_RATE", "60/month"),
        ("TERMINATE_CONCURRENCY", 0),
        ("EXPIRE_IDLE_AFTER", 0),
        ("EXPIRE_GRACE", -1),
        ("EXPIRE_STUCK_AFTER", "5m"),
        ("TRANSCRIPT_RETENTION_DAYS", -3),
        ("SESSION_LIST_LIMIT", None),
        ("OPENAI_MAX_RETRIES", -1),
        ("TERMINATE_RETRIES", 1.5),
        ("TERMINATE_RETRY_BACKOFF", -0.5),
        ("AVATURN_TIMEOUT", 0),
        ("HEARTBEAT_INTERVAL", 0),
        ("WIDGET_INIT_TIMEOUT", "20"),
        ("SESSIONS_ENABLED", "False"),
        ("TRANSCRIPTS_ENABLED", 1),
        ("START_THROTTLE_RATE", "10/fortnight"),
        # DRF reads only the first letter: this would be ten a minute.
        ("START_THROTTLE_RATE", "10/month"),
        ("START_THROTTLE_RATE", 10),
        # A malformed URL must be refused before a client's constructor (key in its frame) sees it.
        ("API_URL", "http://[::1"),
        ("OPENAI_BASE_URL", "api.openai.com/v1"),
        # Read back after the merge: a scalar where a dict belongs is refused, not a 500.
        ("REALTIME_SESSION", {"audio": "x"}),
        ("REALTIME_SESSION", {"audio": {"output": "marin"}}),
        # Sent as JSON: a value JSON cannot carry fails every start.
        ("REALTIME_SESSION", {"tools": [{"type": "function", "name": "x", "parameters": {1, 2}}]}),
        # A socket timeout of inf overflows; nan never compares.
        ("OPENAI_TIMEOUT", float("inf")),
        ("AVATURN_TIMEOUT", float("nan")),
        # A key that cannot be one: the start would refuse it (503), so the check does.
        ("API_KEY", 12345),
        ("OPENAI_API_KEY", "sk two words"),
        ("SDK_API_HOST", "https://api.avaturn.live:99999"),
        # Refused by every start (503), once passed by the check.
        ("VOICE", 123),
        ("VOICE", ""),
        ("MODEL", ""),
        # Read without a rule once: an avatar id sent as str(5), a list split into characters.
        ("AVATAR_ID", 5),
        ("ALLOWED_AVATARS", "avatar-1"),
        ("ALLOWED_AVATARS", ["avatar-1", 2]),
        ("SDK_URL", ""),
        # Longer than the session row records: PostgreSQL would refuse every start's row.
        ("MODEL", "gpt-realtime-" + "x" * 88),
        ("AVATAR_ID", "a" * 256),
        ("TEXT_ECHO", {"VOICE_ID": "v" * 51}),
    ],
)
def test_malformed_settings_are_e003(avaturn: AvaturnOverrides, name: str, value: Any) -> None:
    avaturn(**{name: value})
    messages = avaturn_messages()
    assert ids(messages) == ["django_avaturn.E003"]
    assert name in messages[0].msg
    assert messages[0].hint


@pytest.mark.parametrize(
    ("session", "named"),
    [
        ({"model": "m" * 101}, "['model']"),
        # Recorded as text whatever its type, as the start records it.
        ({"model": ["gpt-realtime"] * 8}, "['model']"),
        ({"audio": {"output": {"voice": "v" * 51}}}, "['audio']['output']['voice']"),
        ({"audio": {"output": {"voice": {"id": "v" * 45}}}}, "['audio']['output']['voice']"),
    ],
)
def test_a_realtime_session_value_longer_than_the_row_records_is_e003_and_refused(
    avaturn: AvaturnOverrides, session: dict[str, Any], named: str
) -> None:
    """What REALTIME_SESSION sets wins over MODEL and VOICE, and is what the row records."""
    avaturn(REALTIME_SESSION=session)
    messages = avaturn_messages()
    assert ids(messages) == ["django_avaturn.E003"]
    assert messages[0].msg.startswith(f"AVATURN['REALTIME_SESSION']{named}: ")
    with pytest.raises(NotConfigured, match="its row records at most"):
        build_plan()


@pytest.mark.parametrize(
    "session", [{"model": "m" * 100}, {"audio": {"output": {"voice": "v" * 50}}}]
)
def test_a_realtime_session_value_the_row_holds_is_no_error(
    avaturn: AvaturnOverrides, session: dict[str, Any]
) -> None:
    avaturn(REALTIME_SESSION=session)
    assert not [m for m in avaturn_messages() if m.level >= Error.level]
    build_plan()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SESSION_CONFIG_HOOK", "tests.nowhere.hook"),
        ("PERMISSION_CLASSES", ["rest_framework.permissions.Nope"]),
        ("OPENAI_HTTP_CLIENT", "django_avaturn.__version__"),
        ("QUOTA_HOOK", 3),
        ("THROTTLE_CLASSES", "django_avaturn.api.throttling.SessionStartThrottle"),
    ],
)
def test_unimportable_paths_are_e004(avaturn: AvaturnOverrides, name: str, value: Any) -> None:
    avaturn(**{name: value})
    messages = avaturn_messages()
    assert ids(messages) == ["django_avaturn.E004"]
    assert name in messages[0].msg


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("tests.nowhere.hook", "cannot be imported: No module named 'tests.nowhere'"),
        # A typo in the function's name: what is missing, and where.
        (
            "django_avaturn.validation.import_calable",
            "cannot be imported: module 'django_avaturn.validation' has no 'import_calable'.",
        ),
        ("hook", "which is not a dotted path."),
    ],
)
def test_an_unimportable_path_says_what_is_wrong(
    avaturn: AvaturnOverrides, value: str, says: str
) -> None:
    avaturn(SESSION_CONFIG_HOOK=value)
    (message,) = avaturn_messages()
    assert says in message.msg


@pytest.mark.parametrize(
    ("modules", "says"),
    [
        (["tests.nowhere_tools"], "'tests.nowhere_tools', which cannot be imported"),
        # A parameter no JSON schema describes: @tool raises as the module imports.
        (["tests.engine_tools_unsupported"], "'tests.engine_tools_unsupported'"),
        (["tests.engine_tools_wrapped"], "put @tool outermost"),
        (["tests.engine_tools_example", "tests.engine_tools_duplicate"], "Two site tools"),
        (["django_avaturn.models"], "which has no @tool functions"),
    ],
)
def test_site_engine_tools_a_start_would_refuse_are_e004(
    avaturn: AvaturnOverrides, modules: list[str], says: str
) -> None:
    """Every start of the site engine loads them and answers 503 if one is wrong: say so now."""
    avaturn(SITE_ENGINE={"TOOLS": modules})
    messages = avaturn_messages()
    assert ids(messages) == ["django_avaturn.E004"]
    assert says in messages[0].msg
    assert ". Every site engine start with these tools will answer 503." in messages[0].msg
    assert ".. Every" not in messages[0].msg


def test_well_declared_site_engine_tools_pass(avaturn: AvaturnOverrides) -> None:
    avaturn(SITE_ENGINE={"TOOLS": ["tests.engine_tools_example"]})
    assert avaturn_messages() == []


def test_missing_keys_are_warnings_not_errors(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("AVATURN_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    settings.AVATURN = {}
    messages = avaturn_messages()
    assert ids(messages) == ["django_avaturn.W001", "django_avaturn.W002"]
    assert all(isinstance(m, Warning) for m in messages)
    assert messages[0].hint == "Set the AVATURN_API_KEY environment variable or AVATURN['API_KEY']."
    assert messages[0].msg == (
        "No Avaturn API key is configured; starting a session will answer 503."
    )
    assert messages[1].msg == "No OpenAI API key is configured; starting a session will answer 503."


def test_env_keys_satisfy_the_check(settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("AVATURN_API_KEY", "x" * 20)
    monkeypatch.setenv("OPENAI_API_KEY", "y" * 20)
    settings.AVATURN = {}
    assert avaturn_messages() == []


def test_unknown_voice_is_w003(avaturn: AvaturnOverrides) -> None:
    avaturn(VOICE="robot")
    assert ids(avaturn_messages()) == ["django_avaturn.W003"]


# httpx2 (the OpenAI SDK's HTTP layer) logs its connections through httpcore2.
@pytest.mark.parametrize("name", ["urllib3", "openai", "httpx2", "httpcore2"])
def test_debug_logging_of_http_libraries_is_w004(name: str) -> None:
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        messages = avaturn_messages()
    finally:
        logger.setLevel(previous)
    assert ids(messages) == ["django_avaturn.W004"]
    assert name in messages[0].msg


def _bad_values(name: str) -> list[Any]:
    from django_avaturn.conf import RULES
    from django_avaturn.validation import Bounds, Flag, Rate, Seconds, Url

    rule = RULES[name]
    if isinstance(rule, Bounds):
        values: list[Any] = [rule.low - 1, "1", True, None, 1.5]
        if rule.high is not None:
            values.append(rule.high + 1)
        return values
    if isinstance(rule, Seconds):
        return [0, -1, 0.0, "5", True, None, 2.5]
    if isinstance(rule, Flag):
        return ["False", 0, 1, None, True, False]
    if isinstance(rule, Url):
        return ["http://[::1", "ftp://example.com", "http://", "http://h:99999", 3, None, ""]
    if isinstance(rule, Rate):
        return ["10/month", "10/fortnight", "0/minute", "ten/minute", 10, None, "", "5/s"]
    return ["not-a-choice", 3, None, "", ["x"], [""], {"type": "x"}, {"minutes_per_day": -1}]


def _validated_settings() -> list[str]:
    from django_avaturn.conf import RULES

    return sorted(RULES)


@pytest.mark.parametrize("name", _validated_settings())
def test_the_check_and_the_runtime_accept_the_same_values(
    avaturn: AvaturnOverrides, name: str
) -> None:
    """A value `manage.py check` passes never fails at request time, and the other way round."""
    from django_avaturn.conf import avaturn_settings
    from django_avaturn.exceptions import NotConfigured

    for value in _bad_values(name):
        avaturn(**{name: value})
        try:
            getattr(avaturn_settings, name)
        except NotConfigured:
            runtime_ok = False
        else:
            runtime_ok = True
        # E003 is the check's "malformed", E004 a dotted path's (E006, say, is about a
        # well-formed TEST_MODE).
        check_ok = not [
            m
            for m in avaturn_messages()
            if m.id in ("django_avaturn.E003", "django_avaturn.E004") and f"['{name}']" in m.msg
        ]
        assert check_ok == runtime_ok, (name, value)


def test_a_heartbeat_too_slow_for_idle_expiry_is_w005(avaturn: AvaturnOverrides) -> None:
    # (W008, the first heartbeat against EXPIRE_UNJOINED_AFTER, has a test of its own.)
    avaturn(HEARTBEAT_INTERVAL=600, EXPIRE_IDLE_AFTER=60, EXPIRE_UNJOINED_AFTER=None)
    assert ids(avaturn_messages()) == ["django_avaturn.W005"]
    avaturn(HEARTBEAT_INTERVAL=30, EXPIRE_IDLE_AFTER=60)
    assert avaturn_messages() == []
    # Idle expiry off: heartbeats are not consulted.
    avaturn(HEARTBEAT_INTERVAL=600, EXPIRE_IDLE_AFTER=None)
    assert avaturn_messages() == []


def test_a_transcript_byte_cap_below_one_line_is_w011(avaturn: AvaturnOverrides) -> None:
    small = {"TRANSCRIPT_MAX_LENGTH": 4000, "TRANSCRIPT_MAX_BYTES": 1000}
    avaturn(**small)
    assert avaturn_messages() == []  # transcripts are off: nothing is refused
    avaturn(TRANSCRIPTS_ENABLED=True)
    assert ids(avaturn_messages()) == ["django_avaturn.W011"]
    avaturn(TRANSCRIPT_MAX_BYTES=4000)
    assert avaturn_messages() == []


def test_a_first_heartbeat_too_late_for_the_unjoined_rule_is_w012(
    settings: Any, avaturn: AvaturnOverrides
) -> None:
    # The widget joins (up to 20 s), then beats every 40 s: 20 + 2 x 40 > 90.
    avaturn(HEARTBEAT_INTERVAL=40, WIDGET_INIT_TIMEOUT=20)
    [message] = avaturn_messages()
    assert message.id == "django_avaturn.W012"
    assert "EXPIRE_UNJOINED_AFTER" in message.msg and "(100 s)" in message.msg
    # Exactly one interval to spare is enough; so is the rule turned off.
    avaturn(HEARTBEAT_INTERVAL=35)
    assert avaturn_messages() == []
    for off in ("EXPIRE_UNJOINED_AFTER", "EXPIRE_IDLE_AFTER"):
        settings.AVATURN = {**settings.AVATURN, "HEARTBEAT_INTERVAL": 40, off: None}
        assert avaturn_messages() == []
        settings.AVATURN = {k: v for k, v in settings.AVATURN.items() if k != off}


def test_sqlite_without_immediate_transactions_is_w006(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    monkeypatch.setitem(connection.settings_dict, "OPTIONS", {"timeout": 20})
    (message,) = avaturn_messages()
    assert message.id == "django_avaturn.W006"
    # The README's step: both options, the wait for the lock with the mode.
    assert message.hint == (
        'Add "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20} to DATABASES[\'default\'].'
    )


def _without_request_processor(settings: Any) -> None:
    engine = settings.TEMPLATES[0]
    processors = [
        name
        for name in engine["OPTIONS"]["context_processors"]
        if name != "django.template.context_processors.request"
    ]
    settings.TEMPLATES = [
        {**engine, "OPTIONS": {**engine["OPTIONS"], "context_processors": processors}}
    ]


@pytest.mark.parametrize(
    ("unreadable", "named"),
    [
        ({"CSRF_USE_SESSIONS": True}, "CSRF_USE_SESSIONS"),
        ({"CSRF_COOKIE_HTTPONLY": True}, "CSRF_COOKIE_HTTPONLY"),
        (
            {"CSRF_USE_SESSIONS": True, "CSRF_COOKIE_HTTPONLY": True},
            "CSRF_USE_SESSIONS and CSRF_COOKIE_HTTPONLY",
        ),
    ],
)
def test_no_csrf_token_by_either_route_is_w007(
    settings: Any, unreadable: dict[str, bool], named: str
) -> None:
    _without_request_processor(settings)
    for name, value in unreadable.items():
        setattr(settings, name, value)
    processor = "'django.template.context_processors.request'"
    assert avaturn_messages() == [
        Warning(
            f"{named} keep the CSRF token from the widget's script, and no Django template "
            f"engine has the {processor} context processor: {{% avaturn_head %}} renders the "
            "token only in a template whose context holds the request; elsewhere Start "
            "answers 403.",
            hint=f"Add {processor} to TEMPLATES[...]['OPTIONS']['context_processors'], or "
            "pass the request in the template's context.",
            id="django_avaturn.W007",
        )
    ]


def test_a_readable_csrf_cookie_needs_no_request_processor(settings: Any) -> None:
    # The widget sends the cookie's token; the rendered one is only its fallback.
    _without_request_processor(settings)
    assert avaturn_messages() == []


def test_the_request_processor_renders_the_token_the_cookie_cannot_give(settings: Any) -> None:
    settings.CSRF_USE_SESSIONS = True
    settings.CSRF_COOKIE_HTTPONLY = True
    assert avaturn_messages() == []


def test_a_urlconf_without_the_session_api_is_e005(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.urls_without_api"
    assert avaturn_messages() == [
        Error(
            "The widget cannot find the session API: ROOT_URLCONF does not include "
            "django_avaturn.urls, so {% avaturn_head %} renders nothing.",
            hint="The session API's URLs are not in the URLconf: add "
            'path("avaturn/", include("django_avaturn.urls")) to your urlpatterns.',
            id="django_avaturn.E005",
        )
    ]


def test_the_session_api_under_its_own_instance_namespace_is_found(settings: Any) -> None:
    # The widget reverses by the app's namespace, which any mount point satisfies.
    settings.ROOT_URLCONF = "tests.urls_own_namespace"
    assert avaturn_messages() == []


def test_an_engine_without_what_a_start_needs_is_e007(
    avaturn: AvaturnOverrides, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    avaturn(ENGINE="cartesia")
    assert avaturn_messages() == [
        Error(
            "AVATURN['ENGINE'] is 'cartesia', but AVATURN['CARTESIA']['API_KEY'] is not set: "
            "every start will answer 503.",
            hint="Set AVATURN['CARTESIA']['API_KEY'] (or the CARTESIA_API_KEY environment "
            "variable), or choose another ENGINE.",
            id="django_avaturn.E007",
        ),
        Error(
            "AVATURN['ENGINE'] is 'cartesia', but AVATURN['CARTESIA']['AGENT_ID'] is not set: "
            "every start will answer 503.",
            hint="Set AVATURN['CARTESIA']['AGENT_ID'] (the Line agent's id), or choose another "
            "ENGINE.",
            id="django_avaturn.E007",
        ),
    ]
    monkeypatch.setenv("CARTESIA_API_KEY", "sk_car_from_the_environment")
    avaturn(CARTESIA={"AGENT_ID": "agent_abc"})
    assert avaturn_messages() == []

    avaturn(ENGINE="external")
    assert ids(avaturn_messages()) == ["django_avaturn.E007"]
    avaturn(EXTERNAL_ENGINE={"HOOK": "tests.test_checks.ids"})
    assert avaturn_messages() == []

    avaturn(ENGINE="text-echo")
    assert ids(avaturn_messages()) == ["django_avaturn.E007"]
    avaturn(TEXT_ECHO={"VOICE_ID": "voice-1"})
    assert avaturn_messages() == []


@pytest.mark.parametrize(("debug", "expected"), [(False, ["django_avaturn.E008"]), (True, [])])
def test_a_ws_engine_url_outside_debug_is_e008(
    avaturn: AvaturnOverrides, settings: Any, debug: bool, expected: list[str]
) -> None:
    settings.DEBUG = debug
    # Checked whatever ENGINE says: the session hook may choose the external engine.
    avaturn(EXTERNAL_ENGINE={"URL": "ws://engine.example.com/avaturn"})
    assert ids(avaturn_messages()) == expected
    # A scheme is read in any case.
    avaturn(EXTERNAL_ENGINE={"URL": "WS://engine.example.com/avaturn"})
    assert ids(avaturn_messages()) == expected
    avaturn(EXTERNAL_ENGINE={"URL": "wss://engine.example.com/avaturn"})
    assert avaturn_messages() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENGINE", "pipecat"),
        ("CARTESIA", {"TOKEN_TTL": 0}),
        ("EXTERNAL_ENGINE", {"SAMPLE_RATE": 8000}),
        ("TEXT_ECHO", {"VOICE": "typo"}),
    ],
)
def test_malformed_engine_settings_are_e003(
    avaturn: AvaturnOverrides, name: str, value: Any
) -> None:
    avaturn(**{name: value})
    assert ids(avaturn_messages()) == ["django_avaturn.E003"]


def test_a_sections_malformed_key_is_e003_with_that_keys_hint(avaturn: AvaturnOverrides) -> None:
    avaturn(CARTESIA={"TOKEN_TTL": 0})
    (message,) = avaturn_messages()
    assert message.msg.startswith("AVATURN['CARTESIA']: CARTESIA['TOKEN_TTL'] must be")
    # What the key accepts, not the section's list of keys.
    assert (
        message.hint == "Set AVATURN['CARTESIA']['TOKEN_TTL'] to a whole number, 1 to 3600 seconds."
    )
