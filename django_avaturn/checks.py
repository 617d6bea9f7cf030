"""System checks: ``manage.py check`` reports what would make a start fail.

========================  ==========================================================
``django_avaturn.E001``   ``rest_framework`` is not in ``INSTALLED_APPS``.
``django_avaturn.E002``   ``AVATURN`` is not a dict, or names a setting that does not exist.
``django_avaturn.E003``   A setting has the wrong type or is out of the upstream's range.
``django_avaturn.E004``   A dotted path (hook, HTTP client, API classes) does not import or call.
``django_avaturn.W001``   The Avaturn API key is missing (starts answer 503).
``django_avaturn.W002``   The OpenAI API key is missing (starts answer 503).
``django_avaturn.W003``   ``VOICE`` is not a voice OpenAI is known to offer.
``django_avaturn.W004``   DEBUG logging of ``urllib3``, ``openai``, ``httpx2``, ``httpcore2``
                          (or ``httpx``, ``httpcore``): keys.
``django_avaturn.W005``   ``HEARTBEAT_INTERVAL`` too long for ``EXPIRE_IDLE_AFTER``.
``django_avaturn.W006``   SQLite without ``IMMEDIATE`` transactions: "database is locked" errors.
``django_avaturn.W007``   No ``request`` context processor: the tag cannot find the CSRF token.
``django_avaturn.W008``   The widget's first heartbeat may come after ``EXPIRE_UNJOINED_AFTER``.
========================  ==========================================================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections, router

from django_avaturn.clients import api_key
from django_avaturn.conf import (
    DEFAULTS,
    IMPORT_STRINGS,
    SETTINGS_NAME,
    avaturn_settings,
    import_callable,
)
from django_avaturn.exceptions import NotConfigured
from django_avaturn.limits import parse_quota
from django_avaturn.session_config import (
    OPENAI_VOICES,
    TEXT_SETTINGS,
    check_session_shape,
    check_text_setting,
)
from django_avaturn.validation import RULES

_HINT_SETTINGS = "See the settings reference in django-avaturn's README."


def _setting(name: str) -> Any:
    return avaturn_settings.raw(name)


def _validation_errors() -> list[CheckMessage]:
    """Every number, choice, flag and rate setting, through the validator the runtime uses."""
    messages: list[CheckMessage] = []
    for name, rule in RULES.items():
        try:
            rule.check(name, _setting(name))
        except NotConfigured as exc:
            messages.append(
                Error(
                    f"AVATURN['{name}']: {exc}",
                    hint=f"Set AVATURN['{name}'] to {rule.expects()}.",
                    id="django_avaturn.E003",
                )
            )
    return messages


@register(Tags.compatibility)
def check_installed_apps(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    if apps.is_installed("rest_framework"):
        return []
    return [
        Error(
            "django_avaturn needs Django REST framework, but 'rest_framework' is not in "
            "INSTALLED_APPS.",
            hint="Add 'rest_framework' to INSTALLED_APPS.",
            id="django_avaturn.E001",
        )
    ]


@register()
def check_settings(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    user_value = getattr(settings, SETTINGS_NAME, {})
    if not isinstance(user_value, dict):
        return [
            Error(
                f"{SETTINGS_NAME} must be a dict, not {type(user_value).__name__}.",
                hint=f"Write {SETTINGS_NAME} = {{...}} in your settings.",
                id="django_avaturn.E002",
            )
        ]
    messages: list[CheckMessage] = []
    unknown = sorted(set(user_value) - set(DEFAULTS))
    if unknown:
        messages.append(
            Error(
                f"{SETTINGS_NAME} has unknown settings: {', '.join(unknown)}.",
                hint=f"Check the spelling; {_HINT_SETTINGS}",
                id="django_avaturn.E002",
            )
        )
    messages.extend(_key_warnings())
    messages.extend(_validation_errors())
    quota_error = _quota_error()
    if quota_error is not None:
        messages.append(quota_error)
    messages.extend(_type_errors())
    messages.extend(_import_errors())
    voice = _setting("VOICE")
    if isinstance(voice, str) and voice and voice not in OPENAI_VOICES:
        messages.append(
            Warning(
                f"AVATURN['VOICE'] is {voice!r}, which OpenAI is not known to offer.",
                hint=f"Known voices: {', '.join(sorted(OPENAI_VOICES))}.",
                id="django_avaturn.W003",
            )
        )
    messages.extend(_debug_logging_warnings())
    return messages


def _quota_error() -> Error | None:
    # The same parser the start uses, so the check and the runtime cannot disagree.
    try:
        parse_quota(_setting("QUOTAS"))
    except NotConfigured as exc:
        return Error(
            f"AVATURN['QUOTAS'] is invalid: {exc}",
            hint='For example {"sessions_per_day": 5, "minutes_per_day": 30}.',
            id="django_avaturn.E003",
        )
    return None


def _key_warnings() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for name, env_name, service, check_id in (
        ("API_KEY", "AVATURN_API_KEY", "Avaturn", "django_avaturn.W001"),
        ("OPENAI_API_KEY", "OPENAI_API_KEY", "OpenAI", "django_avaturn.W002"),
    ):
        try:
            present = api_key(name) is not None
        except NotConfigured as exc:
            # The message names the setting, never the value.
            messages.append(Error(str(exc), hint=_HINT_SETTINGS, id="django_avaturn.E003"))
            continue
        if not present:
            messages.append(
                Warning(
                    f"No {service} API key is configured; starting a session will answer 503.",
                    hint=f"Set the {env_name} environment variable or AVATURN['{name}'].",
                    id=check_id,
                )
            )
    return messages


def _type_errors() -> list[CheckMessage]:
    expectations: dict[str, tuple[type, ...]] = {
        "REALTIME_SESSION": (dict,),
        "ALLOWED_AVATARS": (list, tuple, set, frozenset),
        "SDK_URL": (str,),
        "SDK_INTEGRITY": (str,),
    }
    messages: list[CheckMessage] = []
    for name, types in expectations.items():
        value = _setting(name)
        if isinstance(value, bool) or not isinstance(value, types):
            messages.append(
                Error(
                    f"AVATURN['{name}'] must be {' or '.join(t.__name__ for t in types)}, "
                    f"not {type(value).__name__}.",
                    hint=_HINT_SETTINGS,
                    id="django_avaturn.E003",
                )
            )
    for name in TEXT_SETTINGS:
        try:
            check_text_setting(name, _setting(name))  # the start's own rule
        except NotConfigured as exc:
            messages.append(
                Error(f"AVATURN['{name}']: {exc}", hint=_HINT_SETTINGS, id="django_avaturn.E003")
            )
    session = _setting("REALTIME_SESSION")
    if isinstance(session, dict):
        try:
            check_session_shape(session)  # what the start checks, so they cannot disagree
        except NotConfigured as exc:
            messages.append(
                Error(
                    f"AVATURN['REALTIME_SESSION'] is not a GA realtime session: {exc}",
                    hint="Avaturn drives GA realtime sessions only: 'type' stays 'realtime', "
                    "and 'audio' and 'audio.output' are dicts.",
                    id="django_avaturn.E003",
                )
            )
    return messages


def _import_errors() -> list[CheckMessage]:
    """Every dotted path, through the import the runtime does (a JSON 503 there)."""
    messages: list[CheckMessage] = []
    for name in sorted(IMPORT_STRINGS):
        value = _setting(name)
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(path, str):
                continue
            try:
                import_callable(f"AVATURN['{name}']", path)
            except NotConfigured as exc:
                messages.append(
                    Error(
                        str(exc),
                        hint="Use a dotted path to an importable callable or class.",
                        id="django_avaturn.E004",
                    )
                )
    return messages


def _debug_logging_warnings() -> list[CheckMessage]:
    # urllib3 and the OpenAI SDK log request details (headers included) at
    # DEBUG; with those loggers open, the Authorization header can reach logs.
    leaky = [
        name
        # httpx2 logs through httpcore2; the un-suffixed names for a site on httpx.
        for name in ("urllib3", "openai", "httpx2", "httpcore2", "httpx", "httpcore")
        if logging.getLogger(name).isEnabledFor(logging.DEBUG)
    ]
    if not leaky:
        return []
    return [
        Warning(
            f"DEBUG logging is enabled for {', '.join(leaky)}; request details logged there "
            "can include the API keys.",
            hint="Raise these loggers to INFO or above in LOGGING.",
            id="django_avaturn.W004",
        )
    ]


@register()
def check_setup(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """What the rest of the project must provide for the settings to hold (W005 to W008)."""
    return [
        message
        for message in (
            _heartbeat_warning(),
            _sqlite_warning(),
            _context_processor_warning(),
            _first_heartbeat_warning(),
        )
        if message is not None
    ]


def _heartbeat_warning() -> CheckMessage | None:
    interval, idle_after = _setting("HEARTBEAT_INTERVAL"), _setting("EXPIRE_IDLE_AFTER")
    try:
        for name, value in (("HEARTBEAT_INTERVAL", interval), ("EXPIRE_IDLE_AFTER", idle_after)):
            RULES[name].check(name, value)
    except NotConfigured:
        return None  # malformed: E003 says so
    if idle_after is None or 2 * interval <= idle_after:  # None: idle expiry is off
        return None
    return Warning(
        f"AVATURN['HEARTBEAT_INTERVAL'] ({interval} s) is more than half of "
        f"AVATURN['EXPIRE_IDLE_AFTER'] ({idle_after} s): the expiry command would end a "
        "session in use after one late heartbeat.",
        hint="Keep EXPIRE_IDLE_AFTER at least twice HEARTBEAT_INTERVAL (defaults: 300 and 30).",
        id="django_avaturn.W005",
    )


def _first_heartbeat_warning() -> CheckMessage | None:
    """The widget joins (up to ``WIDGET_INIT_TIMEOUT``), then beats every ``HEARTBEAT_INTERVAL``.

    Its first heartbeat must reach the server before ``EXPIRE_UNJOINED_AFTER``
    with one interval to spare (as W005 allows one late heartbeat), or the
    expiry command ends a session whose visitor did join.
    """
    names = ("WIDGET_INIT_TIMEOUT", "HEARTBEAT_INTERVAL", "EXPIRE_IDLE_AFTER")
    values = {name: _setting(name) for name in (*names, "EXPIRE_UNJOINED_AFTER")}
    try:
        for name, value in values.items():
            RULES[name].check(name, value)
    except NotConfigured:
        return None  # malformed: E003 says so
    unjoined = values["EXPIRE_UNJOINED_AFTER"]
    if unjoined is None or values["EXPIRE_IDLE_AFTER"] is None:  # the rule is off
        return None
    first_beat = values["WIDGET_INIT_TIMEOUT"] + 2 * values["HEARTBEAT_INTERVAL"]
    if first_beat <= unjoined:
        return None
    return Warning(
        f"AVATURN['EXPIRE_UNJOINED_AFTER'] ({unjoined} s) is shorter than "
        f"WIDGET_INIT_TIMEOUT plus twice HEARTBEAT_INTERVAL ({first_beat:g} s): the expiry "
        "command could end a session whose visitor joined before the widget's first heartbeat.",
        hint="Raise EXPIRE_UNJOINED_AFTER or lower HEARTBEAT_INTERVAL (defaults: 90, 20 and 30).",
        id="django_avaturn.W008",
    )


def _sqlite_warning() -> CheckMessage | None:
    from django_avaturn.models import Session

    alias = router.db_for_write(Session)
    connection = connections[alias]
    if connection.vendor != "sqlite":
        return None
    options = connection.settings_dict.get("OPTIONS") or {}
    if str(options.get("transaction_mode", "")).upper() == "IMMEDIATE":
        return None
    return Warning(
        f"The database {alias!r} is SQLite without IMMEDIATE transactions: a transaction "
        "that reads before it writes (ending and expiring sessions, the admin's actions) "
        "fails with 'database is locked' while another writes, instead of waiting its turn.",
        hint=f'Add "OPTIONS": {{"transaction_mode": "IMMEDIATE"}} to DATABASES[{alias!r}].',
        id="django_avaturn.W006",
    )


def _context_processor_warning() -> CheckMessage | None:
    processor = "django.template.context_processors.request"
    engines: list[dict[str, Any]] = [
        engine
        for engine in settings.TEMPLATES
        if engine.get("BACKEND") == "django.template.backends.django.DjangoTemplates"
    ]
    if not engines or any(
        processor in (engine.get("OPTIONS") or {}).get("context_processors", ())
        for engine in engines
    ):
        return None
    return Warning(
        f"No Django template engine has the {processor!r} context processor: "
        "{% avaturn_head %} cannot read the CSRF token, and Start answers 403.",
        hint=f"Add {processor!r} to TEMPLATES[...]['OPTIONS']['context_processors'].",
        id="django_avaturn.W007",
    )
