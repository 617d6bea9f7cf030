"""The one definition of what every whole-number and choice setting accepts.

Both the system checks (``manage.py check``) and the code that uses a
setting validate through here (``int_setting()``, ``choice_setting()``), so a
value the check accepts is a value the runtime accepts, and the other way
round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

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
    "EXPIRE_GRACE": Bounds(0, None, "seconds"),
    "EXPIRE_STUCK_AFTER": Bounds(1, None, "seconds"),
    "TRANSCRIPT_MAX_LENGTH": Bounds(1, None, "characters"),
    "TRANSCRIPT_RETENTION_DAYS": Bounds(0, None, "days", optional=True),
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
RULES: dict[str, Bounds | Choices] = {**INT_SETTINGS, **CHOICE_SETTINGS}


def check_int(name: str, value: object) -> int | None:
    """``value`` as the whole number ``name`` takes, or ``NotConfigured`` saying why not."""
    return INT_SETTINGS[name].check(name, value)


def int_setting(name: str) -> int | None:
    """The configured value of ``name``, validated (``None`` only where it is optional)."""
    return check_int(name, avaturn_settings.raw(name))


def required_int_setting(name: str) -> int:
    return _present(name, int_setting(name))


def choice_setting(name: str) -> str | None:
    """The configured value of ``name``, validated (``None`` only where it is optional)."""
    return CHOICE_SETTINGS[name].check(name, avaturn_settings.raw(name))


def required_choice_setting(name: str) -> str:
    return _present(name, choice_setting(name))


def _present(name: str, value: _T | None) -> _T:
    if value is None:  # only optional settings may be None; this one is not
        raise NotConfigured(f"{name} must be set.")
    return value
