"""The ``AVATURN`` settings namespace: one table, one reader.

``SETTINGS`` holds, for every key, its default and its rule (``validation``).
Everything the app reads goes through ``avaturn_settings``, in the manner of
Django REST framework's ``api_settings``: ``avaturn_settings.NAME`` is the
value configured in ``AVATURN`` (or the default, or for a key its environment
variable), passed through NAME's rule, which returns it typed as the code
uses it (dotted paths imported, ``QUOTAS`` as a ``Quota``) or raises
``NotConfigured`` (a JSON 503 at the API) saying what is wrong, the same
each time it is read. Valid values are cached, but for the keys (read anew
each time, so a rotated environment variable applies); the cache is dropped
whenever ``AVATURN`` changes (so ``override_settings`` works in tests).
Unknown names raise ``AttributeError``. The system checks iterate the same
table.

Read settings at call time (``avaturn_settings.X`` inside a function), never
in a class body or at import time, or ``override_settings`` cannot reach them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from django_avaturn.validation import (
    ENGINES,
    QUOTA_WINDOWS,
    SESSION_LIMIT_POLICIES,
    Bounds,
    Choices,
    DottedPath,
    Flag,
    Headers,
    HeaderValue,
    Key,
    Numbers,
    Quota,
    Quotas,
    Rate,
    RealtimeSession,
    Rule,
    Seconds,
    Section,
    SocketUrl,
    Strings,
    Text,
    Url,
)

SETTINGS_NAME = "AVATURN"

DEFAULT_SDK_URL = "https://cdn.jsdelivr.net/npm/@avaturn-live/web-sdk@0.3.7/dist/main.js"
DEFAULT_SDK_INTEGRITY = "sha384-Ooequa+Lwlhi20saTDhuRzu1zMgREazsDNQgI5GI8SAk0JNz35fC8MdMxVzE3LT7"


# The conversation engines' own settings (see docs/engines.md).
CARTESIA = Section(
    (
        # ``None``: the CARTESIA_API_KEY environment variable. Never rendered or logged.
        ("API_KEY", None, Key()),
        ("AGENT_ID", None, Text(optional=True)),
        ("API_URL", "https://api.cartesia.ai", Url()),
        ("VERSION", "2025-04-16", HeaderValue()),
        # Seconds a minted access token is valid for joining (Cartesia allows up to an hour).
        ("TOKEN_TTL", 300, Bounds(1, 3600, "seconds")),
    ),
    env=(("API_KEY", "CARTESIA_API_KEY"),),
)
EXTERNAL_ENGINE = Section(
    (
        ("URL", None, SocketUrl(optional=True)),
        # Sent by Avaturn on the engine's WebSocket upgrade; never logged or rendered.
        ("HEADERS", {}, Headers()),
        ("SAMPLE_RATE", 24000, Numbers(frozenset({16000, 24000}))),
        # Dotted path to ``hook(request, plan) -> {"url", "headers"}``, called per start.
        ("HOOK", None, DottedPath()),
    )
)
# The site engine (django_avaturn.engine): OpenAI Realtime bridged by this site,
# which runs its own tools. The conversation itself takes MODEL, VOICE,
# INSTRUCTIONS and REALTIME_SESSION, as openai-realtime does.
SITE_ENGINE = Section(
    (
        # The origin Avaturn reaches this site's engine socket at: wss://example.com
        # (a path prefix is kept); ws:// only with DEBUG on.
        ("PUBLIC_URL", None, SocketUrl(optional=True)),
        # Modules whose @tool functions the model may call.
        ("TOOLS", [], Strings()),
        # How long one tool call may run before the model is told it timed out.
        ("TOOL_TIMEOUT", 10, Bounds(1, 300, "seconds")),
        # A call still running after this long: the avatar says it is checking (None: never).
        ("TOOL_NOTICE_AFTER", 2, Bounds(1, 60, "seconds", optional=True)),
        # Store each call's arguments with its record (they may hold personal data).
        ("RECORD_TOOL_ARGUMENTS", False, Flag()),
        # Seconds Avaturn has, from the start, to open the engine socket (its token's age).
        ("CONNECT_WITHIN", 120, Bounds(10, 900, "seconds")),
        # Where the engine opens OpenAI Realtime; None: the openai SDK's own default.
        ("OPENAI_WEBSOCKET_URL", None, SocketUrl(optional=True)),
    )
)
TEXT_ECHO = Section(
    (
        ("TTS_ENGINE", "elevenlabs", Choices(frozenset({"elevenlabs", "google"}))),
        ("VOICE_ID", None, Text(optional=True)),
    )
)


@dataclass(frozen=True)
class Setting:
    """One key of ``AVATURN``: its default, and the rule its value must pass."""

    default: Any
    rule: Rule


# Every setting. CLIENT_SECRET_TTL, MAX_DURATION, USER_ABSENT_TIMEOUT, BACKGROUND
# and RENDER_MODEL(_FIELD) take OpenAI's and Avaturn's documented values; the
# other ranges are ours.
SETTINGS: dict[str, Setting] = {
    # True: talk to an in-process loopback fake of both upstreams instead of
    # the real ones, with its own keys (see ``test_mode``); never in production.
    "TEST_MODE": Setting(False, Flag()),
    # Credentials. ``None`` means "read the environment variable named in
    # ENV_FALLBACKS"; they are never rendered, logged or returned.
    "API_KEY": Setting(None, Key()),
    "OPENAI_API_KEY": Setting(None, Key()),
    # Where the upstreams live.
    "API_URL": Setting("https://api.avaturn.live", Url()),
    # What the browser SDK gets as ``apiHost``; ``None`` means API_URL, which
    # is what it must be unless a proxy sits between the browser and Avaturn.
    "SDK_API_HOST": Setting(None, Url(optional=True)),
    "OPENAI_BASE_URL": Setting(None, Url(optional=True)),
    # Dotted path to a zero-argument callable returning an ``httpx2.Client``
    # for the OpenAI SDK (proxies, custom TLS, or a transport in tests).
    "OPENAI_HTTP_CLIENT": Setting(None, DottedPath()),
    # Which conversation engine a session talks with (the hook may choose per start).
    "ENGINE": Setting("openai-realtime", Choices(ENGINES)),
    "CARTESIA": Setting(CARTESIA.defaults(), CARTESIA),
    "EXTERNAL_ENGINE": Setting(EXTERNAL_ENGINE.defaults(), EXTERNAL_ENGINE),
    "TEXT_ECHO": Setting(TEXT_ECHO.defaults(), TEXT_ECHO),
    "SITE_ENGINE": Setting(SITE_ENGINE.defaults(), SITE_ENGINE),
    # The OpenAI Realtime session (GA shape) the avatar talks with.
    "MODEL": Setting("gpt-realtime", Text()),
    "VOICE": Setting("marin", Text()),
    "INSTRUCTIONS": Setting(
        "You are a friendly assistant. Keep your answers short and spoken.", Text(empty_ok=True)
    ),
    # Any other GA session field, merged over the above (e.g.
    # {"audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}).
    "REALTIME_SESSION": Setting({}, RealtimeSession()),
    "CLIENT_SECRET_TTL": Setting(600, Bounds(10, 7200, "seconds")),
    # The Avaturn Live session.
    "AVATAR_ID": Setting(None, Text(optional=True)),
    "ALLOWED_AVATARS": Setting([], Strings()),
    "BACKGROUND": Setting(None, Choices(frozenset({"transparent", "default"}), optional=True)),
    "RENDER_MODEL": Setting(None, Choices(frozenset({"delta", "golf"}), optional=True)),
    "RENDER_MODEL_FIELD": Setting("model", Choices(frozenset({"model", "render_model"}))),
    "MAX_DURATION": Setting(3600, Bounds(60, 86400, "seconds")),
    "USER_ABSENT_TIMEOUT": Setting(60, Bounds(10, None, "seconds")),
    # Per-request session config: dotted path to ``hook(request, config)``.
    "SESSION_CONFIG_HOOK": Setting(None, DottedPath()),
    # Upstream HTTP behaviour.
    "OPENAI_TIMEOUT": Setting(15.0, Seconds()),
    "OPENAI_MAX_RETRIES": Setting(1, Bounds(0)),
    "AVATURN_CONNECT_TIMEOUT": Setting(5.0, Seconds()),
    "AVATURN_TIMEOUT": Setting(20.0, Seconds()),
    "TERMINATE_RETRIES": Setting(2, Bounds(0)),
    "TERMINATE_RETRY_BACKOFF": Setting(0.25, Seconds(zero_ok=True)),
    # Bulk terminations (admin action, expiry command): DELETEs in flight at once.
    "TERMINATE_CONCURRENCY": Setting(8, Bounds(1)),
    # The expiry command (seconds; see docs/operations.md).
    # A live session whose browser has sent no heartbeat for this long is
    # stale; ``None`` turns the heartbeat test off.
    "EXPIRE_IDLE_AFTER": Setting(300, Bounds(1, None, "seconds", optional=True)),
    # A live session whose browser sent no heartbeat this long after it went
    # live never joined it (the page was left during the start); ``None``
    # turns this test off (as does EXPIRE_IDLE_AFTER = None).
    "EXPIRE_UNJOINED_AFTER": Setting(90, Bounds(1, None, "seconds", optional=True)),
    # Slack added to the secret's expiry and the session's max_duration
    # before they count, for clock skew and Avaturn's own shutdown.
    "EXPIRE_GRACE": Setting(60, Bounds(0, None, "seconds")),
    # A row left ending this long belongs to a crashed process. (One left
    # starting: once the start's own upstream timeouts have run out, see
    # clients.longest_start.)
    "EXPIRE_STUCK_AFTER": Setting(300, Bounds(1, None, "seconds")),
    # Spending limits.
    "MAX_LIVE_SESSIONS_PER_USER": Setting(1, Bounds(1)),
    "ON_SESSION_LIMIT": Setting("end_oldest", Choices(SESSION_LIMIT_POLICIES)),
    # Site-wide cap on sessions that may be billed (starting, live, ending); None = none.
    "MAX_LIVE_SESSIONS": Setting(None, Bounds(1, optional=True)),
    # The kill switch in settings; the admin's switch (a database row) also applies.
    "SESSIONS_ENABLED": Setting(True, Flag()),
    # Per-user quotas: {"sessions_per_day": int | None, "minutes_per_day": int | None}.
    "QUOTAS": Setting({}, Quotas()),
    # Dotted path to ``hook(user) -> dict`` of the same keys (e.g. by plan); wins over QUOTAS.
    "QUOTA_HOOK": Setting(None, DottedPath()),
    # "day": the calendar day in the current time zone; "rolling": the last 24 hours.
    "QUOTA_WINDOW": Setting("day", Choices(QUOTA_WINDOWS)),
    # Transcripts (privacy: off unless the site turns them on).
    "TRANSCRIPTS_ENABLED": Setting(False, Flag()),
    "TRANSCRIPT_MAX_LENGTH": Setting(4000, Bounds(1, None, "characters")),
    # Per session, whatever its length: lines, and their text's UTF-8 bytes. Beyond
    # either a line is refused (413). Both fit an hour's talk many times over.
    "TRANSCRIPT_MAX_LINES": Setting(3600, Bounds(1, None, "lines")),
    "TRANSCRIPT_MAX_BYTES": Setting(2_000_000, Bounds(1, None, "bytes")),
    # Per user, across their sessions; None or "" turns it off.
    "TRANSCRIPT_THROTTLE_RATE": Setting("60/minute", Rate()),
    # The page's messages to its site engine conversation (POST sessions/<id>/messages/),
    # per user across their sessions; None or "" turns it off.
    "MESSAGE_THROTTLE_RATE": Setting("30/minute", Rate()),
    # Days to keep transcripts; the expiry command purges older ones. None = forever.
    "TRANSCRIPT_RETENTION_DAYS": Setting(None, Bounds(1, None, "days", optional=True)),
    # The REST API.
    "AUTHENTICATION_CLASSES": Setting(
        ["rest_framework.authentication.SessionAuthentication"], DottedPath(many=True)
    ),
    "PERMISSION_CLASSES": Setting(
        ["rest_framework.permissions.IsAuthenticated"], DottedPath(many=True)
    ),
    "THROTTLE_CLASSES": Setting(
        ["django_avaturn.api.throttling.SessionStartThrottle"], DottedPath(many=True)
    ),
    "START_THROTTLE_RATE": Setting("10/minute", Rate()),
    "SESSION_LIST_LIMIT": Setting(50, Bounds(1)),
    # The widget ({% avaturn_head %}).
    "SDK_URL": Setting(DEFAULT_SDK_URL, Text()),
    "SDK_INTEGRITY": Setting(DEFAULT_SDK_INTEGRITY, Text(empty_ok=True)),
    "WIDGET_INIT_TIMEOUT": Setting(20, Seconds()),
    "HEARTBEAT_INTERVAL": Setting(30, Seconds()),
}

DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in SETTINGS.items()}
RULES: dict[str, Rule] = {name: setting.rule for name, setting in SETTINGS.items()}

ENV_FALLBACKS: dict[str, str] = {
    "API_KEY": "AVATURN_API_KEY",
    "OPENAI_API_KEY": "OPENAI_API_KEY",
}
# Read anew each time, never cached: they hold a key that may come from the environment.
READ_ANEW: frozenset[str] = frozenset({*ENV_FALLBACKS, "CARTESIA"})

# What TEST_MODE takes from the fake instead of AVATURN: where the upstreams
# (the site engine's OpenAI Realtime included) and the browser SDK are, and
# the keys they accept.
TEST_MODE_SETTINGS: frozenset[str] = frozenset(
    {
        "API_KEY",
        "OPENAI_API_KEY",
        "API_URL",
        "OPENAI_BASE_URL",
        "OPENAI_HTTP_CLIENT",
        "SDK_API_HOST",
        "SDK_URL",
        "SDK_INTEGRITY",
        "CARTESIA",
        "SITE_ENGINE",
    }
)
# Of those, the ones whose value is a dict: the fake's entries are merged over the site's.
TEST_MODE_SECTIONS: frozenset[str] = frozenset({"CARTESIA", "SITE_ENGINE"})


class AvaturnSettings:
    """Lazy, validated, cached view of ``settings.AVATURN`` with defaults.

    The annotations below are the type of each key as its rule returns it
    (for mypy; ``tests/test_settings.py`` holds them to the table's keys).
    """

    TEST_MODE: bool
    API_KEY: str | None
    OPENAI_API_KEY: str | None
    API_URL: str
    SDK_API_HOST: str | None
    OPENAI_BASE_URL: str | None
    OPENAI_HTTP_CLIENT: Callable[[], Any] | None
    ENGINE: str
    CARTESIA: dict[str, Any]
    EXTERNAL_ENGINE: dict[str, Any]
    TEXT_ECHO: dict[str, Any]
    SITE_ENGINE: dict[str, Any]
    MODEL: str
    VOICE: str
    INSTRUCTIONS: str
    REALTIME_SESSION: Mapping[str, Any]
    CLIENT_SECRET_TTL: int
    AVATAR_ID: str | None
    ALLOWED_AVATARS: tuple[str, ...]
    BACKGROUND: str | None
    RENDER_MODEL: str | None
    RENDER_MODEL_FIELD: str
    MAX_DURATION: int
    USER_ABSENT_TIMEOUT: int
    SESSION_CONFIG_HOOK: Callable[..., Any] | None
    OPENAI_TIMEOUT: float
    OPENAI_MAX_RETRIES: int
    AVATURN_CONNECT_TIMEOUT: float
    AVATURN_TIMEOUT: float
    TERMINATE_RETRIES: int
    TERMINATE_RETRY_BACKOFF: float
    TERMINATE_CONCURRENCY: int
    EXPIRE_IDLE_AFTER: int | None
    EXPIRE_UNJOINED_AFTER: int | None
    EXPIRE_GRACE: int
    EXPIRE_STUCK_AFTER: int
    MAX_LIVE_SESSIONS_PER_USER: int
    ON_SESSION_LIMIT: str
    MAX_LIVE_SESSIONS: int | None
    SESSIONS_ENABLED: bool
    QUOTAS: Quota
    QUOTA_HOOK: Callable[[Any], Any] | None
    QUOTA_WINDOW: str
    TRANSCRIPTS_ENABLED: bool
    TRANSCRIPT_MAX_LENGTH: int
    TRANSCRIPT_MAX_LINES: int
    TRANSCRIPT_MAX_BYTES: int
    TRANSCRIPT_THROTTLE_RATE: str | None
    MESSAGE_THROTTLE_RATE: str | None
    TRANSCRIPT_RETENTION_DAYS: int | None
    AUTHENTICATION_CLASSES: list[type[Any]]
    PERMISSION_CLASSES: list[type[Any]]
    THROTTLE_CLASSES: list[type[Any]]
    START_THROTTLE_RATE: str | None
    SESSION_LIST_LIMIT: int
    SDK_URL: str
    SDK_INTEGRITY: str
    WIDGET_INIT_TIMEOUT: float
    HEARTBEAT_INTERVAL: float

    def __init__(self) -> None:
        self._cached: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, SETTINGS_NAME, None) or {}
        return value if isinstance(value, dict) else {}

    def raw(self, name: str) -> Any:
        """The value in use (defaults applied, the fake's under TEST_MODE), not validated.

        Under TEST_MODE, reading one of ``TEST_MODE_SETTINGS`` starts this
        process's fake; a malformed TEST_MODE is ``NotConfigured`` here.
        """
        if name in TEST_MODE_SETTINGS:
            from django_avaturn import test_mode  # (it reads this module's settings)

            if test_mode.is_on():
                fake = test_mode.fake_setting(name)
                if name in TEST_MODE_SECTIONS:
                    configured = self.configured(name)
                    return {**(configured if isinstance(configured, Mapping) else {}), **fake}
                return fake
        return self.configured(name)

    def configured(self, name: str) -> Any:
        """The value as configured (defaults and environment applied), whatever TEST_MODE says.

        Not validated: for the system checks, and for what must see even a
        malformed value (``redaction`` scrubs a key however it is set).
        """
        if name not in SETTINGS:
            raise AttributeError(f"Invalid {SETTINGS_NAME} setting: {name!r}")
        value = self.user_settings.get(name, DEFAULTS[name])
        if value is None and name in ENV_FALLBACKS:
            value = os.environ.get(ENV_FALLBACKS[name]) or None
        return value

    def validate(self, name: str, value: object) -> Any:
        """``value`` through ``name``'s rule: for one given in its place (by a hook, a flag)."""
        return RULES[name].check(name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._cached[name]
        except KeyError:
            pass
        value = self.validate(name, self.raw(name))  # (raw raises for an unknown name)
        # Keys are deliberately not cached: the environment may change
        # between requests (secrets rotation) and reading it is cheap.
        if name not in READ_ANEW:
            self._cached[name] = value
        return value

    def reload(self) -> None:
        self._cached.clear()

    def __repr__(self) -> str:
        # Never let a key reach a debugger, a log or an error page.
        return f"<{type(self).__name__} ({SETTINGS_NAME})>"


avaturn_settings = AvaturnSettings()


def sdk_api_host() -> str:
    """The browser SDK's ``apiHost``: ``SDK_API_HOST``, else ``API_URL``."""
    return (avaturn_settings.SDK_API_HOST or avaturn_settings.API_URL).rstrip("/")


@receiver(setting_changed)
def _reload_avaturn_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        avaturn_settings.reload()
