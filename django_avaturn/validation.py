"""What each ``AVATURN`` setting accepts: the rule classes of the table in ``conf``.

A rule's ``check(name, value)`` returns the value as the code uses it, or
raises ``NotConfigured`` saying what is wrong (a JSON 503 at the API);
``expects()`` says what it accepts (the system check's hint), and
``check_id`` is the check's id for a refused value. ``conf.avaturn_settings``
applies the rules when a setting is read and the system checks iterate the
same table, so a value the check accepts is a value the runtime accepts, and
the other way round.

This module imports nothing of the app's but its exceptions: ``conf`` builds
on it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from math import isfinite
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from django.utils.functional import Promise
from django.views.decorators.debug import sensitive_variables

from django_avaturn.exceptions import NotConfigured

MALFORMED = "django_avaturn.E003"
NOT_IMPORTABLE = "django_avaturn.E004"


class Rule(Protocol):
    """What one setting accepts."""

    check_id: ClassVar[str]

    def expects(self) -> str: ...

    def check(self, name: str, value: Any) -> Any: ...


@dataclass(frozen=True)
class Bounds:
    """A whole-number setting's range."""

    check_id: ClassVar[str] = MALFORMED
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

    check_id: ClassVar[str] = MALFORMED
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

    check_id: ClassVar[str] = MALFORMED

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

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return 'None or a rate such as "10/minute" (per second, minute, hour or day)'

    def check(self, name: str, value: object) -> str | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not _RATE.fullmatch(value):
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        return value


# A URL sent to Avaturn for its engine socket: longer is no URL a server takes.
SOCKET_URL_MAX = 4096


def _unsplittable(value: str) -> bool:
    """Whether ``value`` holds what ``urlsplit`` quietly drops or a URL cannot carry
    (whitespace, a newline, a control character): the value checked would not be the
    value sent."""
    return not value.isprintable() or any(char.isspace() for char in value)


@dataclass(frozen=True)
class Url:
    """An ``http(s)://host[:port][/path]`` base URL (``None`` or ``""`` only where optional).

    Checked before a client is built from it: a malformed one would fail
    inside the client's constructor, whose frame holds the API key.
    """

    check_id: ClassVar[str] = MALFORMED
    optional: bool = False

    def expects(self) -> str:
        base = "an http:// or https:// URL with a host"
        return f"None or {base}" if self.optional else base

    def check(self, name: str, value: object) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str) or _unsplittable(value):
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

    check_id: ClassVar[str] = MALFORMED
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


@dataclass(frozen=True)
class Text:
    """A string, non-empty unless ``empty_ok``; with ``optional``, ``None`` (or ``""``) too.

    A refusal names the type, never the value: a misplaced prompt could be
    pages long.
    """

    check_id: ClassVar[str] = MALFORMED
    empty_ok: bool = False
    optional: bool = False

    def expects(self) -> str:
        text = "a string" if self.empty_ok else "a non-empty string"
        return f"None or {text}" if self.optional else text

    def check(self, name: str, value: object) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str) or (not value and not self.empty_ok):
            got = "an empty string" if value == "" else type(value).__name__
            raise NotConfigured(f"{name} must be {self.expects()}, not {got}.")
        return value


@dataclass(frozen=True)
class Strings:
    """A list (or tuple or set) of non-empty strings; a string alone is refused, not split."""

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return 'a list of non-empty strings, such as ["avatar-1"]'

    def check(self, name: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple, set, frozenset)):
            raise NotConfigured(f"{name} must be {self.expects()}, not {type(value).__name__}.")
        if not all(isinstance(item, str) and item for item in value):
            raise NotConfigured(f"{name} must be {self.expects()}; it holds other items.")
        return tuple(value)


@sensitive_variables("value")
def clean_key(name: str, value: object) -> str | None:
    """``value`` as the key ``AVATURN[name]``, whitespace stripped; ``None`` if unset."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise NotConfigured(f"{name} must be a string, not {type(value).__name__}.")
    # A key read from a file or a secret store often ends in a newline. Sent
    # as is, it makes an illegal header, whose error message (which HTTP
    # libraries log) quotes the whole header, key included.
    value = value.strip()
    if not value or not value.isascii() or not value.isprintable() or " " in value:
        raise NotConfigured(f"{name} holds characters no API key has.")
    return value


@dataclass(frozen=True)
class Key:
    """An API key (``None`` or ``""``: unset); a refusal never quotes the value."""

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return "the API key, a string without spaces or control characters"

    def check(self, name: str, value: object) -> str | None:
        return clean_key(name, value)


QUOTA_KEYS = frozenset({"sessions_per_day", "minutes_per_day"})


@dataclass(frozen=True)
class Quota:
    sessions_per_day: int | None = None
    minutes_per_day: int | None = None

    @property
    def is_unlimited(self) -> bool:
        return self.sessions_per_day is None and self.minutes_per_day is None


def parse_quota(raw: Any) -> Quota:
    """``QUOTAS`` (or a ``QUOTA_HOOK``'s answer) as a ``Quota``; ``NotConfigured`` if malformed."""
    if raw is None:
        return Quota()
    if not isinstance(raw, Mapping) or set(raw) - QUOTA_KEYS:
        raise NotConfigured(f"Quotas must be a dict with keys among {sorted(QUOTA_KEYS)}.")
    values: dict[str, int | None] = {}
    for key in QUOTA_KEYS:
        value = raw.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise NotConfigured(f"Quota {key} must be None or a whole number, not {value!r}.")
        values[key] = value
    return Quota(**values)


@dataclass(frozen=True)
class Quotas:
    """``QUOTAS``: a dict of ``QUOTA_KEYS`` to whole numbers or ``None``, read as a ``Quota``."""

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return 'a dict such as {"sessions_per_day": 5, "minutes_per_day": 30}'

    def check(self, name: str, value: object) -> Quota:
        return parse_quota(value)


def check_session_shape(session: Mapping[str, Any]) -> None:
    """``NotConfigured`` unless ``session`` is a GA realtime session we can read and send.

    The merged session is read back (``audio.output.voice``): a scalar where a
    dict belongs would fail there with an AttributeError, a 500. It is sent as
    JSON, so it holds JSON values only.
    """
    if session.get("type", "realtime") != "realtime":
        # Avaturn only drives GA realtime sessions; anything else fails to start.
        raise NotConfigured('REALTIME_SESSION "type" must be "realtime".')
    audio = session.get("audio", {})
    if not isinstance(audio, Mapping) or not isinstance(audio.get("output", {}), Mapping):
        raise NotConfigured('REALTIME_SESSION "audio" and "audio.output" must be dicts.')
    try:
        # Sent as JSON once the start has reserved its slot (and ended what it
        # replaces): a value JSON cannot carry must fail here, before all that.
        json.dumps(plain_json(session), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # (a dict that holds itself)
        raise NotConfigured(
            "The realtime session (REALTIME_SESSION, and a hook's realtime_session) must "
            "hold only JSON values (strings, numbers, booleans, null, lists and dicts; the "
            f"openai SDK's models and dates are converted): {exc}."
        ) from None


def plain_json(value: Any) -> Any:
    """``value`` with what the openai SDK would encode as JSON made JSON already.

    Its models (``model_dump``, as the SDK sends them), dates and times (ISO 8601)
    and lazy translation strings (in the active language); tuples become lists.
    Anything else is left as it is, for ``json.dumps`` to accept or refuse.
    """
    if isinstance(value, Mapping):
        return {key: plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(item) for item in value]
    if isinstance(value, Promise):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        return model_dump(mode="json", by_alias=True, exclude_unset=True)
    return value


@dataclass(frozen=True)
class RealtimeSession:
    """``REALTIME_SESSION``: a dict of GA realtime session fields (merged over the shorthands)."""

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return (
            "a dict of GA realtime session fields ('type' stays 'realtime'; 'audio' and "
            "'audio.output' are dicts)"
        )

    def check(self, name: str, value: object) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise NotConfigured(
                f"{name} must be a dict of GA session fields, not {type(value).__name__}."
            )
        check_session_shape(value)
        return value


def import_callable(name: str, path: str) -> Callable[..., Any]:
    """``path`` imported; ``NotConfigured`` if it cannot be, or is not callable.

    Never chained, and an ``ImportError``'s message repeated only where Python
    wrote it (it names a module or a name, often one the named module
    imports): a site's own may quote its configuration, keys included.
    """
    module_path, dot, attribute = path.rpartition(".")
    if not dot or not module_path or not attribute:
        raise NotConfigured(f"{name} names {path!r}, which is not a dotted path.")
    try:
        module = import_module(module_path)
    except ImportError as exc:
        reason = str(exc) if exc.name is not None else "its import raised ImportError"
        raise NotConfigured(f"{name} names {path!r}, which cannot be imported: {reason}") from None
    try:
        imported = getattr(module, attribute)
    except AttributeError:
        raise NotConfigured(
            f"{name} names {path!r}, which cannot be imported: module {module_path!r} has "
            f"no {attribute!r}."
        ) from None
    if not callable(imported):
        raise NotConfigured(f"{name} names {path!r}, which is not callable.")
    return imported  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DottedPath:
    """A dotted path to a callable (``None``: none), imported; with ``many``, a list of them.

    An entry may also be the callable itself (a class, as DRF allows).
    """

    check_id: ClassVar[str] = NOT_IMPORTABLE
    many: bool = False

    def expects(self) -> str:
        if self.many:
            return "a list of dotted paths to importable classes"
        return "None or a dotted path to an importable callable"

    def check(self, name: str, value: object) -> Any:
        if self.many:
            if not isinstance(value, (list, tuple)):
                raise NotConfigured(f"{name} must be {self.expects()}, not {type(value).__name__}.")
            return [self._one(name, item) for item in value]
        return None if value is None else self._one(name, value)

    def _one(self, name: str, value: object) -> Callable[..., Any]:
        if isinstance(value, str):
            return import_callable(name, value)
        if not callable(value):
            raise NotConfigured(f"{name} must be {self.expects()}, not {type(value).__name__}.")
        return value


@dataclass(frozen=True)
class Numbers:
    """A whole number that takes one of a few values."""

    check_id: ClassVar[str] = MALFORMED
    values: frozenset[int]

    def expects(self) -> str:
        return f"one of {sorted(self.values)}"

    def check(self, name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in self.values:
            raise NotConfigured(f"{name} must be {self.expects()}, not {value!r}.")
        return value


@dataclass(frozen=True)
class SocketUrl:
    """A ``wss://`` (or ``ws://``) URL with a host; ``None`` or ``""`` where optional.

    Its scheme is read in any case (``WSS://``) and given back in lower case,
    as every reader compares it. Whether ``ws://`` may be used (DEBUG only)
    is the engine's check, not the rule's.
    """

    check_id: ClassVar[str] = MALFORMED
    optional: bool = False

    def expects(self) -> str:
        base = "a wss:// (or, with DEBUG on, ws://) URL with a host"
        return f"None or {base}" if self.optional else base

    def check(self, name: str, value: object) -> str | None:
        if self.optional and value in (None, ""):
            return None
        if not isinstance(value, str):
            raise NotConfigured(f"{name} must be {self.expects()}, not {type(value).__name__}.")
        if len(value) > SOCKET_URL_MAX or _unsplittable(value):
            raise NotConfigured(
                f"{name} must be {self.expects()}, at most {SOCKET_URL_MAX} characters, "
                "without spaces or control characters."
            )
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  # raises ValueError for a port out of range
        except ValueError:
            raise NotConfigured(f"{name} must be {self.expects()}.") from None
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            # Not quoted: a signed per-session URL carries a credential.
            raise NotConfigured(f"{name} must be {self.expects()}.")
        return parts.scheme + value[len(parts.scheme) :]


# Longest header value sent upstream: servers commonly refuse a header section
# over 8 KB, so a longer value could only fail the upgrade or the call.
HEADER_VALUE_MAX = 8192

# A header name as RFC 9110 allows it (a token).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True)
class Headers:
    """Extra HTTP headers: a dict of header names to printable values; values never quoted."""

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return 'a dict of header names to string values, such as {"X-Engine-Secret": "..."}'

    @sensitive_variables("value")
    def check(self, name: str, value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise NotConfigured(f"{name} must be {self.expects()}, not {type(value).__name__}.")
        for key, item in value.items():
            if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key):
                raise NotConfigured(f"{name} holds a key that is no header name.")
            if not isinstance(item, str) or not item.isprintable() or not item.isascii():
                raise NotConfigured(f"{name}[{key!r}] must be a printable ASCII string.")
            if len(item) > HEADER_VALUE_MAX:
                raise NotConfigured(f"{name}[{key!r}] is over {HEADER_VALUE_MAX} characters.")
        return dict(value)


@dataclass(frozen=True)
class HeaderValue:
    """A string sent as one HTTP header's value: non-empty, printable ASCII (no newline)."""

    check_id: ClassVar[str] = MALFORMED

    def expects(self) -> str:
        return "a non-empty printable ASCII string (it is sent as an HTTP header)"

    def check(self, name: str, value: object) -> str:
        if not isinstance(value, str) or not value or not (value.isprintable() and value.isascii()):
            raise NotConfigured(f"{name} must be {self.expects()}.")
        if len(value) > HEADER_VALUE_MAX:
            raise NotConfigured(f"{name} is over {HEADER_VALUE_MAX} characters.")
        return value


@dataclass(frozen=True)
class Section:
    """A dict of sub-settings, each with its default and rule; keys not listed are refused.

    Returns every key, defaults filled in. ``env``: sub-keys read from an
    environment variable when unset (``None``), as the top-level keys are.
    """

    check_id: ClassVar[str] = MALFORMED
    fields: tuple[tuple[str, Any, Rule], ...]
    env: tuple[tuple[str, str], ...] = ()

    def defaults(self) -> dict[str, Any]:
        return {key: default for key, default, _ in self.fields}

    def expects(self) -> str:
        return f"a dict with keys among {[key for key, _, _ in self.fields]}"

    @sensitive_variables("value", "raw")
    def check(self, name: str, value: object) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise NotConfigured(f"{name} must be {self.expects()}, not {type(value).__name__}.")
        unknown = set(value) - {key for key, _, _ in self.fields}
        if unknown:
            raise NotConfigured(
                f"{name} has unknown keys {sorted(map(str, unknown))}; expected {self.expects()}."
            )
        env = dict(self.env)
        checked: dict[str, Any] = {}
        for key, default, rule in self.fields:
            raw = value.get(key, default)
            if raw is None and key in env:
                raw = os.environ.get(env[key]) or None
            try:
                checked[key] = rule.check(f"{name}['{key}']", raw)
            except NotConfigured as exc:
                # Which key, and what it accepts: manage.py check's hint (not the section's).
                exc.key, exc.expects = key, rule.expects()
                raise
        return checked


ENGINES = frozenset({"openai-realtime", "cartesia", "external", "text-echo", "site"})
SESSION_LIMIT_POLICIES = frozenset({"end_oldest", "refuse"})
QUOTA_WINDOWS = frozenset({"day", "rolling"})
