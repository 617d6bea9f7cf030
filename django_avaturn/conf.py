"""The ``AVATURN`` settings namespace.

Everything the app reads from the project's settings goes through
``avaturn_settings``, in the manner of Django REST framework's
``api_settings``: attribute access falls back to ``DEFAULTS``, dotted paths
named in ``IMPORT_STRINGS`` are imported, unknown names raise, values are
cached, and the cache is dropped whenever ``AVATURN`` changes (so
``override_settings`` works in tests).

Read settings at call time (``avaturn_settings.X`` inside a function), never
in a class body or at import time, or ``override_settings`` cannot reach them.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_avaturn.exceptions import NotConfigured

SETTINGS_NAME = "AVATURN"

DEFAULT_SDK_URL = "https://cdn.jsdelivr.net/npm/@avaturn-live/web-sdk@0.3.7/dist/main.js"
DEFAULT_SDK_INTEGRITY = "sha384-Ooequa+Lwlhi20saTDhuRzu1zMgREazsDNQgI5GI8SAk0JNz35fC8MdMxVzE3LT7"

DEFAULTS: dict[str, Any] = {
    # True: talk to an in-process loopback fake of both upstreams instead of
    # the real ones, with its own keys (see ``test_mode``); never in production.
    "TEST_MODE": False,
    # Credentials. ``None`` means "read the environment variable named in
    # ENV_FALLBACKS"; they are never rendered, logged or returned.
    "API_KEY": None,
    "OPENAI_API_KEY": None,
    # Where the upstreams live.
    "API_URL": "https://api.avaturn.live",
    # What the browser SDK gets as ``apiHost``; ``None`` means API_URL, which
    # is what it must be unless a proxy sits between the browser and Avaturn.
    "SDK_API_HOST": None,
    "OPENAI_BASE_URL": None,
    # Dotted path to a zero-argument callable returning an ``httpx2.Client``
    # for the OpenAI SDK (proxies, custom TLS, or a transport in tests).
    "OPENAI_HTTP_CLIENT": None,
    # The OpenAI Realtime session (GA shape) the avatar talks with.
    "MODEL": "gpt-realtime",
    "VOICE": "marin",
    "INSTRUCTIONS": "You are a friendly assistant. Keep your answers short and spoken.",
    # Any other GA session field, merged over the above (e.g.
    # {"audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}).
    "REALTIME_SESSION": {},
    "CLIENT_SECRET_TTL": 600,
    # The Avaturn Live session.
    "AVATAR_ID": None,
    "ALLOWED_AVATARS": [],
    "BACKGROUND": None,
    "RENDER_MODEL": None,
    "RENDER_MODEL_FIELD": "model",
    "MAX_DURATION": 3600,
    "USER_ABSENT_TIMEOUT": 60,
    # Per-request session config: dotted path to ``hook(request, config)``.
    "SESSION_CONFIG_HOOK": None,
    # Upstream HTTP behaviour.
    "OPENAI_TIMEOUT": 15.0,
    "OPENAI_MAX_RETRIES": 1,
    "AVATURN_CONNECT_TIMEOUT": 5.0,
    "AVATURN_TIMEOUT": 20.0,
    "TERMINATE_RETRIES": 2,
    "TERMINATE_RETRY_BACKOFF": 0.25,
    # Bulk terminations (admin action, expiry command): DELETEs in flight at once.
    "TERMINATE_CONCURRENCY": 8,
    # The expiry command (seconds; see docs/operations.md).
    # A live session whose browser has sent no heartbeat for this long is
    # stale; ``None`` turns the heartbeat test off.
    "EXPIRE_IDLE_AFTER": 300,
    # A live session whose browser sent no heartbeat this long after it went
    # live never joined it (the page was left during the start); ``None``
    # turns this test off (as does EXPIRE_IDLE_AFTER = None).
    "EXPIRE_UNJOINED_AFTER": 90,
    # Slack added to the secret's expiry and the session's max_duration
    # before they count, for clock skew and Avaturn's own shutdown.
    "EXPIRE_GRACE": 60,
    # A row left ending this long belongs to a crashed process. (One left
    # starting: once the start's own upstream timeouts have run out, see
    # clients.longest_start.)
    "EXPIRE_STUCK_AFTER": 300,
    # Spending limits.
    "MAX_LIVE_SESSIONS_PER_USER": 1,
    "ON_SESSION_LIMIT": "end_oldest",
    # Site-wide cap on sessions that may be billed (starting, live, ending); None = none.
    "MAX_LIVE_SESSIONS": None,
    # The kill switch in settings; the admin's switch (a database row) also applies.
    "SESSIONS_ENABLED": True,
    # Per-user quotas: {"sessions_per_day": int | None, "minutes_per_day": int | None}.
    "QUOTAS": {},
    # Dotted path to ``hook(user) -> dict`` of the same keys (e.g. by plan); wins over QUOTAS.
    "QUOTA_HOOK": None,
    # "day": the calendar day in the current time zone; "rolling": the last 24 hours.
    "QUOTA_WINDOW": "day",
    # Transcripts (privacy: off unless the site turns them on).
    "TRANSCRIPTS_ENABLED": False,
    "TRANSCRIPT_MAX_LENGTH": 4000,
    # Per session, whatever its length: lines, and their text's UTF-8 bytes. Beyond
    # either a line is refused (413). Both fit an hour's talk many times over.
    "TRANSCRIPT_MAX_LINES": 3600,
    "TRANSCRIPT_MAX_BYTES": 2_000_000,
    # Per user, across their sessions; None or "" turns it off.
    "TRANSCRIPT_THROTTLE_RATE": "60/minute",
    # Days to keep transcripts; the expiry command purges older ones. None = forever.
    "TRANSCRIPT_RETENTION_DAYS": None,
    # The REST API.
    "AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "THROTTLE_CLASSES": ["django_avaturn.api.throttling.SessionStartThrottle"],
    "START_THROTTLE_RATE": "10/minute",
    "SESSION_LIST_LIMIT": 50,
    # The widget ({% avaturn_head %}).
    "SDK_URL": DEFAULT_SDK_URL,
    "SDK_INTEGRITY": DEFAULT_SDK_INTEGRITY,
    "WIDGET_INIT_TIMEOUT": 20,
    "HEARTBEAT_INTERVAL": 30,
}

ENV_FALLBACKS: dict[str, str] = {
    "API_KEY": "AVATURN_API_KEY",
    "OPENAI_API_KEY": "OPENAI_API_KEY",
}

# What TEST_MODE takes from the fake instead of AVATURN: where the upstreams
# and the browser SDK are, and the keys they accept.
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
    }
)

IMPORT_STRINGS: frozenset[str] = frozenset(
    {
        "OPENAI_HTTP_CLIENT",
        "SESSION_CONFIG_HOOK",
        "QUOTA_HOOK",
        "AUTHENTICATION_CLASSES",
        "PERMISSION_CLASSES",
        "THROTTLE_CLASSES",
    }
)


def _import(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return import_callable(name, value)
    if isinstance(value, (list, tuple)):
        return [import_callable(name, item) if isinstance(item, str) else item for item in value]
    return value


def import_callable(name: str, path: str) -> Any:
    """``path`` imported; ``NotConfigured`` (a JSON 503, E004 in the check) if it cannot be."""
    try:
        imported = import_string(path)
    except ImportError as exc:
        # The reason too: often a module the named one imports is missing.
        raise NotConfigured(f"{name} names {path!r}, which cannot be imported: {exc}") from exc
    if not callable(imported):
        raise NotConfigured(f"{name} names {path!r}, which is not callable.")
    return imported


class AvaturnSettings:
    """Lazy, cached view of ``settings.AVATURN`` with defaults."""

    def __init__(self) -> None:
        self._cached: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, SETTINGS_NAME, None) or {}
        return value if isinstance(value, dict) else {}

    def raw(self, name: str) -> Any:
        """The value in use (defaults applied, the fake's under TEST_MODE), without imports.

        Under TEST_MODE, reading one of ``TEST_MODE_SETTINGS`` starts this
        process's fake; a malformed TEST_MODE is ``NotConfigured`` here.
        """
        if name in TEST_MODE_SETTINGS:
            from django_avaturn import test_mode  # (it reads this module's settings)

            if test_mode.is_on():
                return test_mode.fake_settings()[name]
        return self.configured(name)

    def configured(self, name: str) -> Any:
        """The value as configured (defaults and environment applied), whatever TEST_MODE says."""
        if name not in DEFAULTS:
            raise AttributeError(f"Invalid {SETTINGS_NAME} setting: {name!r}")
        value = self.user_settings.get(name, DEFAULTS[name])
        if value is None and name in ENV_FALLBACKS:
            value = os.environ.get(ENV_FALLBACKS[name]) or None
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._cached:
            return self._cached[name]
        value = self.raw(name)
        if name in IMPORT_STRINGS:
            value = _import(name, value)
        # Keys are deliberately not cached: the environment may change
        # between requests (secrets rotation) and reading it is cheap.
        if name not in ENV_FALLBACKS:
            self._cached[name] = value
        return value

    def reload(self) -> None:
        self._cached.clear()

    def __repr__(self) -> str:
        # Never let a key reach a debugger, a log or an error page.
        return f"<{type(self).__name__} ({SETTINGS_NAME})>"


avaturn_settings = AvaturnSettings()


@receiver(setting_changed)
def _reload_avaturn_settings(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        avaturn_settings.reload()
