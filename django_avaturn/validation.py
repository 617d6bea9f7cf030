"""The one definition of what every number, choice, flag and rate setting accepts.

Both the system checks (``manage.py check``) and the code that uses a
setting validate through here (``int_setting()``, ``seconds_setting()``,
``choice_setting()``, ``rate_setting()``), so a value the check accepts is a
value the runtime accepts, and the other way round.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import isfinite
from typing import TypeVar
from urllib.parse import urlsplit

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import NotConfigured

_T = TypeVar("_T")


@dataclass(frozen=True)
class Bounds:
    """A whole-number setting's range."""

    low: int
    high: int | None = None
    unit: str = ""
    optional: bool = False  # None is allowed (and means "off")

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.high is None:
            return f"at least {self.low}{unit}"
        return f"{self.low} to {self.high}{unit}"

    def expects(self) -> str:
        return f"a whole number, {self.describe()}"

    def check(self, name: str, value: object) -> int | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        if value < self.low or (self.high is not None and value > self.high):
            raise NotConfigured(f"{name} must be {self.describe()}, not {value}.")
        return value


@dataclass(frozen=True)
class Seconds:
    """A duration in seconds: a number (int or float), above zero unless ``zero_ok``."""

    zero_ok: bool = False

    def expects(self) -> str:
        return "a number of seconds, " + ("0 or more" if self.zero_ok else "above 0")

    def check(self, name: str, value: object) -> float:
        # Not inf or nan: a socket timeout of inf overflows, and nan never compares.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not isfinite(value):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        if value < 0 or (value == 0 and not self.zero_ok):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value}.")
        return float(value)


@dataclass(frozen=True)
class Flag:
    """A setting that is ``True`` or ``False``: a string such as ``"False"`` would read as on."""

    def expects(self) -> str:
        return "True or False"

    def check(self, name: str, value: object) -> bool:
        if not isinstance(value, bool):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        return value


# DRF's throttles read only a period's first letter, so "10/month" would
# silently mean ten a minute: only the spellings that say what they mean.
_RATE = re.compile(
    r"[1-9][0-9]*/(s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)",
)


@dataclass(frozen=True)
class Rate:
    """A DRF throttle rate such as ``"10/minute"``, or ``None``/``""`` for no throttle."""

    def expects(self) -> str:
        return 'None or a rate such as "10/minute" (per second, minute, hour or day)'

    def check(self, name: str, value: object) -> str | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not _RATE.fullmatch(value):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        return value


@dataclass(frozen=True)
class Url:
    """An ``http(s)://host[:port][/path]`` base URL (``None`` or ``""`` only where optional).

    Checked before a client is built from it: a malformed one would fail
    inside the client's constructor, whose frame holds the API key.
    """

    optional: bool = False

    def expects(self) -> str:
        base = "an http:// or https:// URL with a host"
        return f"None or {base}" if self.optional else base

    def check(self, name: str, value: object) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  # raises ValueError for a port out of range
        except ValueError:
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        return value


@dataclass(frozen=True)
class Choices:
    """A setting that takes one of a few strings."""

    values: frozenset[str]
    optional: bool = False  # None or "" is allowed (and means "Avaturn's default")

    def expects(self) -> str:
        return f"one of {sorted(self.values)}"

    def check(self, name: str, value: object) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str) or value not in self.values:
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        return value


INT_SETTINGS: dict[str, Bounds] = {
    # OpenAI's and Avaturn's documented ranges (see upstream.md).
    "CLIENT_SECRET_TTL": Bounds(10, 7200, "seconds"),
    "MAX_DURATION": Bounds(60, 86400, "seconds"),
    "USER_ABSENT_TIMEOUT": Bounds(10, None, "seconds"),
    # Ours.
    "MAX_LIVE_SESSIONS_PER_USER": Bounds(1),
    "MAX_LIVE_SESSIONS": Bounds(1, optional=True),
    "TERMINATE_CONCURRENCY": Bounds(1),
    "EXPIRE_IDLE_AFTER": Bounds(1, None, "seconds", optional=True),
    "EXPIRE_UNJOINED_AFTER": Bounds(1, None, "seconds", optional=True),
    "EXPIRE_GRACE": Bounds(0, None, "seconds"),
    "EXPIRE_STUCK_AFTER": Bounds(1, None, "seconds"),
    "TRANSCRIPT_MAX_LENGTH": Bounds(1, None, "characters"),
    "TRANSCRIPT_MAX_LINES": Bounds(1, None, "lines"),
    "TRANSCRIPT_MAX_BYTES": Bounds(1, None, "bytes"),
    # At least a day, as the expiry command's --purge-transcripts-older-than.
    "TRANSCRIPT_RETENTION_DAYS": Bounds(1, None, "days", optional=True),
    "SESSION_LIST_LIMIT": Bounds(1),
    "OPENAI_MAX_RETRIES": Bounds(0),
    "TERMINATE_RETRIES": Bounds(0),
}

SECONDS_SETTINGS: dict[str, Seconds] = {
    "OPENAI_TIMEOUT": Seconds(),
    "AVATURN_CONNECT_TIMEOUT": Seconds(),
    "AVATURN_TIMEOUT": Seconds(),
    "TERMINATE_RETRY_BACKOFF": Seconds(zero_ok=True),
    "WIDGET_INIT_TIMEOUT": Seconds(),
    "HEARTBEAT_INTERVAL": Seconds(),
}

FLAG_SETTINGS: dict[str, Flag] = {
    "TEST_MODE": Flag(),
    "SESSIONS_ENABLED": Flag(),
    "TRANSCRIPTS_ENABLED": Flag(),
}

RATE_SETTINGS: dict[str, Rate] = {
    "START_THROTTLE_RATE": Rate(),
    "TRANSCRIPT_THROTTLE_RATE": Rate(),
}

URL_SETTINGS: dict[str, Url] = {
    "API_URL": Url(),
    "OPENAI_BASE_URL": Url(optional=True),
    "SDK_API_HOST": Url(optional=True),
}

SESSION_LIMIT_POLICIES = frozenset({"end_oldest", "refuse"})
QUOTA_WINDOWS = frozenset({"day", "rolling"})

CHOICE_SETTINGS: dict[str, Choices] = {
    "ON_SESSION_LIMIT": Choices(SESSION_LIMIT_POLICIES),
    "QUOTA_WINDOW": Choices(QUOTA_WINDOWS),
    # Avaturn's documented values (see upstream.md).
    "BACKGROUND": Choices(frozenset({"transparent", "default"}), optional=True),
    "RENDER_MODEL": Choices(frozenset({"delta", "golf"}), optional=True),
    "RENDER_MODEL_FIELD": Choices(frozenset({"model", "render_model"})),
}

# Every validated setting, for the system checks.
RULES: dict[str, Bounds | Seconds | Flag | Rate | Url | Choices] = {
    **INT_SETTINGS,
    **SECONDS_SETTINGS,
    **FLAG_SETTINGS,
    **RATE_SETTINGS,
    **URL_SETTINGS,
    **CHOICE_SETTINGS,
}


def validated_setting(name: str) -> object:
    """The configured value of any validated setting, or ``NotConfigured`` saying why not."""
    return RULES[name].check(name, avaturn_settings.raw(name))


def check_int(name: str, value: object) -> int | None:
    """``value`` as the whole number ``name`` takes, or ``NotConfigured`` saying why not."""
    return INT_SETTINGS[name].check(name, value)


def int_setting(name: str) -> int | None:
    """The configured value of ``name``, validated (``None`` only where it is optional)."""
    return check_int(name, avaturn_settings.raw(name))


def required_int_setting(name: str) -> int:
    return _present(name, int_setting(name))


def seconds_setting(name: str) -> float:
    return SECONDS_SETTINGS[name].check(name, avaturn_settings.raw(name))


def flag_setting(name: str) -> bool:
    return FLAG_SETTINGS[name].check(name, avaturn_settings.raw(name))


def rate_setting(name: str) -> str | None:
    return RATE_SETTINGS[name].check(name, avaturn_settings.raw(name))


def url_setting(name: str) -> str | None:
    return URL_SETTINGS[name].check(name, avaturn_settings.raw(name))


def required_url_setting(name: str) -> str:
    return _present(name, url_setting(name))


def sdk_api_host() -> str:
    """The browser SDK's ``apiHost``: ``SDK_API_HOST``, else ``API_URL``."""
    return (url_setting("SDK_API_HOST") or required_url_setting("API_URL")).rstrip("/")


def choice_setting(name: str) -> str | None:
    """The configured value of ``name``, validated (``None`` only where it is optional)."""
    return CHOICE_SETTINGS[name].check(name, avaturn_settings.raw(name))


def required_choice_setting(name: str) -> str:
    return _present(name, choice_setting(name))


def _present(name: str, value: _T | None) -> _T:
    if value is None:  # only optional settings may be None; this one is not
        raise NotConfigured(f"{name} must be set.")
    return value
