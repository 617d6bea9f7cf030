"""System checks: ``manage.py check`` reports what would make a start fail.

========================  ==========================================================
``django_avaturn.E001``   ``rest_framework`` is not in ``INSTALLED_APPS``.
``django_avaturn.E002``   ``AVATURN`` is not a dict, or names a setting that does not exist
                          (the hint names the closest one).
``django_avaturn.E003``   A setting is refused by its rule: wrong type, or out of range; or
                          longer than the session row records.
``django_avaturn.E004``   A dotted path (hook, HTTP client, API classes) does not import or call;
                          a site engine tool module does not import or holds no valid ``@tool``.
``django_avaturn.E005``   The URLconf does not include ``django_avaturn.urls``.
``django_avaturn.E006``   ``TEST_MODE`` is on with ``DEBUG`` off.
``django_avaturn.E007``   The chosen ``ENGINE`` lacks a setting it needs.
``django_avaturn.E008``   An engine's socket URL is ``ws://`` with ``DEBUG`` off.
``django_avaturn.E009``   ``ENGINE`` is ``"site"`` but Django Channels is not installed.
``django_avaturn.W001``   The Avaturn API key is missing (starts answer 503).
``django_avaturn.W002``   The OpenAI API key is missing (starts answer 503).
``django_avaturn.W003``   ``VOICE`` is not a voice OpenAI is known to offer.
``django_avaturn.W004``   DEBUG logging of ``urllib3``, ``openai``, ``httpx2``, ``httpcore2``
                          (or ``httpx``, ``httpcore``): keys.
``django_avaturn.W005``   ``HEARTBEAT_INTERVAL`` too long for ``EXPIRE_IDLE_AFTER``.
``django_avaturn.W006``   SQLite without ``IMMEDIATE`` transactions: "database is locked" errors.
``django_avaturn.W007``   No CSRF token for the widget: cookie unreadable and no ``request``
                          context processor.
``django_avaturn.W008``   ``AVATURN_API_KEY = ...`` (any setting outside ``AVATURN``): ignored.
``django_avaturn.W009``   ``TEST_MODE`` is on: sessions go to the loopback fake.
``django_avaturn.W010``   (``--deploy``) With ``DEBUG`` off, the fake's keys or loopback URLs.
``django_avaturn.W011``   ``TRANSCRIPT_MAX_BYTES`` below ``TRANSCRIPT_MAX_LENGTH``: lines refused.
``django_avaturn.W012``   The widget's first heartbeat may come after ``EXPIRE_UNJOINED_AFTER``.
``django_avaturn.W013``   ``ENGINE`` is ``"site"`` with the in-memory channel layer, ``DEBUG`` off.
``django_avaturn.W014``   ``ENGINE`` is ``"site"`` with no channel layer (``CHANNEL_LAYERS``).
``django_avaturn.W015``   ``ENGINE`` is ``"site"`` with ``channels_redis`` on redis-py 8 and a
                          host without a ``socket_timeout`` above its 5 s blocking read.
========================  ==========================================================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from difflib import get_close_matches
from importlib import metadata
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.apps import AppConfig, apps
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections
from django.urls import NoReverseMatch

from django_avaturn.conf import DEFAULTS, ENV_FALLBACKS, RULES, SETTINGS_NAME, avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.models import sessions_database
from django_avaturn.sessions.engines import check_socket_url
from django_avaturn.sessions.plan import (
    OPENAI_VOICES,
    recorded_model_and_voice_from_settings,
    too_long_to_record,
)
from django_avaturn.testing import (
    DEFAULT_AVATURN_API_KEY,
    DEFAULT_CARTESIA_API_KEY,
    DEFAULT_OPENAI_API_KEY,
    is_loopback_host,
)
from django_avaturn.widget import MISSING_INCLUDE, api_urls

_HINT_SETTINGS = "See the Settings page of django-avaturn's documentation."


def _setting(name: str) -> Any:
    # As configured: under TEST_MODE too, the check validates what the site set
    # (and starts no fake).
    return avaturn_settings.configured(name)


def _test_mode_on() -> bool:
    return _setting("TEST_MODE") is True  # anything else but False is E003


def _validation_errors() -> list[CheckMessage]:
    """Every setting, through the rule ``avaturn_settings`` applies when it is read.

    E003, or the rule's own id (E004 for a dotted path that does not import).
    The message never holds a key: ``validation.clean_key`` names only the setting.
    """
    messages: list[CheckMessage] = []
    for name, rule in RULES.items():
        try:
            rule.check(name, _setting(name))
        except NotConfigured as exc:
            # A section's key: what that key accepts, not the section's shape.
            setting = f"AVATURN['{name}']" + (f"['{exc.key}']" if exc.key else "")
            messages.append(
                Error(
                    f"AVATURN['{name}']: {exc}",
                    hint=f"Set {setting} to {exc.expects or rule.expects()}.",
                    id=rule.check_id,
                )
            )
    return messages


def _too_long_to_record_errors() -> list[CheckMessage]:
    """E003 for a setting the session row cannot hold: every start would fail on PostgreSQL.

    ``REALTIME_SESSION``'s own ``model`` and ``voice`` win over ``MODEL`` and
    ``VOICE``, and are recorded instead. The session hook's values are
    checked per start (``sessions.plan.build_plan``).
    """
    text_echo = _section("TEXT_ECHO")
    recorded = [("MODEL", "model"), ("VOICE", "voice"), ("AVATAR_ID", "avatar_id")]
    values = [(name, row_field, _setting(name)) for name, row_field in recorded]
    if text_echo is not None:
        values.append(("TEXT_ECHO']['VOICE_ID", "voice", text_echo["VOICE_ID"]))
    realtime = _section("REALTIME_SESSION")
    if realtime is not None:
        try:
            model, voice = recorded_model_and_voice_from_settings()
        except NotConfigured:
            pass  # E003 from the setting at fault
        else:
            # Recorded as sent (as text, whatever its type), as a start records it.
            if "model" in realtime:
                values.append(("REALTIME_SESSION']['model", "model", model))
            if "voice" in realtime.get("audio", {}).get("output", {}):
                values.append(("REALTIME_SESSION']['audio']['output']['voice", "voice", voice))
    messages: list[CheckMessage] = []
    for name, row_field, value in values:
        if not isinstance(value, str):
            continue  # E003 from its rule, or unset
        if (problem := too_long_to_record(row_field, value)) is not None:
            messages.append(
                Error(
                    f"AVATURN['{name}']: {problem}",
                    hint=f"Set AVATURN['{name}'] to the value the upstream expects.",
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
    messages: list[CheckMessage] = [
        _unknown_setting_error(name) for name in sorted(set(user_value) - set(DEFAULTS), key=str)
    ]
    messages.extend(_misplaced_settings_warnings())
    messages.extend(_key_warnings())
    messages.extend(_validation_errors())
    messages.extend(_too_long_to_record_errors())
    voice = _setting("VOICE")
    if isinstance(voice, str) and voice and voice not in OPENAI_VOICES:
        messages.append(
            Warning(
                f"AVATURN['VOICE'] is {voice!r}, which OpenAI is not known to offer.",
                hint=f"Known voices: {', '.join(sorted(OPENAI_VOICES))}.",
                id="django_avaturn.W003",
            )
        )
    transcript_warning = _transcript_cap_warning()
    if transcript_warning is not None:
        messages.append(transcript_warning)
    messages.extend(_debug_logging_warnings())
    messages.extend(_engine_errors())
    return messages


def _section(name: str) -> dict[str, Any] | None:
    """The engine section ``name`` through its rule; None if malformed (E003 says so)."""
    try:
        checked: dict[str, Any] = RULES[name].check(name, _setting(name))
    except NotConfigured:
        return None
    return checked


def _engine_errors() -> list[CheckMessage]:
    """E007 for the chosen ENGINE without what it needs; E008 for a ws:// engine URL;
    E009, W013, W014 and W015 for the site engine's Channels.

    What a start of that engine would refuse (``sessions.engines.require``),
    reported at deploy rather than on the first start. The hook may choose an
    engine or its options per start, so E007 looks only at ``ENGINE``; a ws://
    URL is refused outside DEBUG whichever way it is chosen.
    """
    messages: list[CheckMessage] = []
    engine = _setting("ENGINE")
    missing: list[tuple[str, str]] = []
    cartesia = _section("CARTESIA")
    if engine == "cartesia" and cartesia is not None:
        if cartesia["API_KEY"] is None and not _test_mode_on():
            missing.append(("CARTESIA']['API_KEY", "or the CARTESIA_API_KEY environment variable"))
        if cartesia["AGENT_ID"] is None:
            missing.append(("CARTESIA']['AGENT_ID", "the Line agent's id"))
    external = _section("EXTERNAL_ENGINE")
    if (
        engine == "external"
        and external is not None
        and not external["URL"]
        and external["HOOK"] is None
    ):
        missing.append(("EXTERNAL_ENGINE']['URL", "or AVATURN['EXTERNAL_ENGINE']['HOOK']"))
    text_echo = _section("TEXT_ECHO")
    if engine == "text-echo" and text_echo is not None and text_echo["VOICE_ID"] is None:
        missing.append(("TEXT_ECHO']['VOICE_ID", "the text-to-speech voice"))
    site = _section("SITE_ENGINE")
    if engine == "site" and site is not None and not site["PUBLIC_URL"]:
        missing.append(
            ("SITE_ENGINE']['PUBLIC_URL", "the wss:// origin Avaturn reaches this site at")
        )
    for name, what in missing:
        messages.append(
            Error(
                f"AVATURN['ENGINE'] is {engine!r}, but AVATURN['{name}'] is not set: every "
                "start will answer 503.",
                hint=f"Set AVATURN['{name}'] ({what}), or choose another ENGINE.",
                id="django_avaturn.E007",
            )
        )
    urls = [
        ("EXTERNAL_ENGINE']['URL", external["URL"] if external is not None else None),
        ("SITE_ENGINE']['PUBLIC_URL", site["PUBLIC_URL"] if site is not None else None),
    ]
    for name, url in urls:
        if not isinstance(url, str) or not url:
            continue
        try:
            check_socket_url(name, url)  # the rule every start applies
        except NotConfigured:
            messages.append(
                Error(
                    f"AVATURN['{name}'] is a ws:// URL while DEBUG is off: the visitor's "
                    "voice would cross the internet unencrypted, and starts refuse it.",
                    hint="Use the engine's wss:// URL.",
                    id="django_avaturn.E008",
                )
            )
    if engine == "site":
        messages.extend(_channels_messages())
    if site is not None and site["TOOLS"]:
        # Whatever ENGINE says: the hook may choose the site engine per start.
        messages.extend(_tool_errors(site["TOOLS"]))
    return messages


def _tool_errors(modules: Sequence[str]) -> list[CheckMessage]:
    """E004: a module of ``SITE_ENGINE["TOOLS"]`` that a site engine start would refuse.

    Loaded as every start of that engine loads them (``engine.tools.load_registry``):
    the module must import, and its ``@tool`` functions be well declared (their
    decorator raises at import when a signature cannot be described to the model).
    """
    from django_avaturn.engine.tools import load_registry

    try:
        load_registry(modules)
    except NotConfigured as exc:
        # Python's import errors end without a full stop.
        problem = str(exc) if str(exc).endswith(".") else f"{exc}."
        return [
            Error(
                f"{problem} Every site engine start with these tools will answer 503.",
                hint="Fix the module, or take it out of AVATURN['SITE_ENGINE']['TOOLS'].",
                id="django_avaturn.E004",
            )
        ]
    return []


def _channels_messages() -> list[CheckMessage]:
    """E009: no Channels for the site engine; W013/W014/W015: a layer that cannot reach
    its consumers, or that ends them.

    Whether several processes serve the site cannot be told from here, so the
    in-memory layer (one process only) is reported whenever DEBUG is off.
    """
    try:
        import channels  # noqa: F401
    except ImportError:
        return [
            Error(
                "AVATURN['ENGINE'] is 'site', but Django Channels is not installed: "
                "nothing can serve the engine socket, and every start will answer 503.",
                hint="pip install 'django-avaturn[engine]', and route the socket "
                "(see the site engine's documentation).",
                id="django_avaturn.E009",
            )
        ]
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    backend = (layers.get("default") or {}).get("BACKEND") if isinstance(layers, dict) else None
    if not backend:
        return [
            Warning(
                "AVATURN['ENGINE'] is 'site' but no channel layer is configured: ending a "
                "session does not close its engine at once (it closes when Avaturn's "
                "session ends), and messages to a conversation answer 503.",
                hint="Set CHANNEL_LAYERS, with channels_redis.core.RedisChannelLayer when "
                "more than one process serves the site.",
                id="django_avaturn.W014",
            )
        ]
    if backend == "channels.layers.InMemoryChannelLayer" and not settings.DEBUG:
        return [
            Warning(
                "AVATURN['ENGINE'] is 'site' with the in-memory channel layer: it reaches "
                "only consumers in the same process, so with more than one worker or host "
                "ending a session, say() and page messages miss conversations held by "
                "another process.",
                hint="Use channels_redis.core.RedisChannelLayer (or add "
                "'django_avaturn.W013' to SILENCED_SYSTEM_CHECKS if one process serves "
                "the site).",
                id="django_avaturn.W013",
            )
        ]
    if backend == REDIS_CHANNEL_LAYER and _redis_reads_time_out(layers["default"]):
        return [
            Warning(
                "AVATURN['ENGINE'] is 'site' with channels_redis on redis-py 8, whose "
                "reads time out after 5 s unless told otherwise: the layer's receive "
                "blocks up to 5 s in Redis, so a process's read of the layer fails with "
                "a TimeoutError every 5 s while it holds a conversation: a warning each "
                "time, and its consumer reads again (no message is lost).",
                hint="Give each host a socket_timeout above 5 s: CHANNEL_LAYERS['default']"
                "['CONFIG']['hosts'] = [{'address': 'redis://...', 'socket_timeout': 10}].",
                id="django_avaturn.W015",
            )
        ]
    return []


REDIS_CHANNEL_LAYER = "channels_redis.core.RedisChannelLayer"
# How long channels_redis's receive() blocks in Redis (BZPOPMIN), in seconds.
REDIS_LAYER_BLOCKING_READ = 5
# redis-py 8's read timeout when a connection is given none (before 8: no timeout).
REDIS_PY_8_DEFAULT_TIMEOUT = 5


def _redis_major_version() -> int | None:
    try:
        return int(metadata.version("redis").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _redis_reads_time_out(layer: Any) -> bool:
    """Whether a host of this channels_redis layer reads with a timeout of 5 s or less.

    A host is a URL string (``?socket_timeout=`` in its query), a ``(host, port)``
    pair, or a dict of the connection pool's arguments (``socket_timeout`` among
    them); None is no timeout. Only redis-py 8 gives a host without one a 5 s timeout.
    """
    major = _redis_major_version()
    if major is None or major < 8:
        return False
    config = layer.get("CONFIG") if isinstance(layer, dict) else None
    hosts = (config or {}).get("hosts") if isinstance(config, dict) else None
    if not hosts:
        hosts = [("localhost", 6379)]  # channels_redis's default
    for host in hosts if isinstance(hosts, (list, tuple)) else [hosts]:
        timeout: Any = REDIS_PY_8_DEFAULT_TIMEOUT
        if isinstance(host, dict) and "socket_timeout" in host:
            timeout = host["socket_timeout"]
        elif isinstance(host, str):
            given = parse_qs(urlsplit(host).query).get("socket_timeout")
            if given:
                try:
                    timeout = float(given[-1])
                except ValueError:
                    continue  # redis-py refuses it when connecting: not this check's to say
        if timeout is None:
            continue
        if isinstance(timeout, (int, float)) and timeout <= REDIS_LAYER_BLOCKING_READ:
            return True
    return False


def _unknown_setting_error(name: object) -> Error:
    nested = _nested_setting(name) if isinstance(name, str) else None
    close = get_close_matches(str(name), DEFAULTS, n=1) if isinstance(name, str) else []
    if nested is not None:
        spelling = f"Did you mean {SETTINGS_NAME}{nested}? "
    elif close:
        spelling = f"Did you mean {close[0]!r}? "
    else:
        spelling = "Check the spelling. "
    return Error(
        f"{SETTINGS_NAME}[{name!r}] is not a django-avaturn setting.",
        hint=spelling + _HINT_SETTINGS,
        id="django_avaturn.E002",
    )


def _nested_setting(name: str) -> str | None:
    """``['CARTESIA']['API_KEY']`` for ``CARTESIA_API_KEY``: a section's key written flat."""
    for section, default in DEFAULTS.items():
        if isinstance(default, dict) and name.startswith(f"{section}_"):
            key = name.removeprefix(f"{section}_")
            if key in default:
                return f"[{section!r}][{key!r}]"
    return None


def _misplaced_settings_warnings() -> list[CheckMessage]:
    """Django settings the app ignores that are easily taken for its own.

    ``AVATURN_<NAME>`` for any of its settings, and a key's environment
    variable name (``OPENAI_API_KEY``) set in settings.py while the app has
    no such key: that one may be the site's own, for its own OpenAI calls.
    """
    prefix = f"{SETTINGS_NAME}_"
    misplaced = {
        attribute: attribute.removeprefix(prefix)
        for attribute in dir(settings)
        if attribute.startswith(prefix) and attribute.removeprefix(prefix) in DEFAULTS
    }
    for name, env_name in ENV_FALLBACKS.items():
        if env_name not in misplaced and hasattr(settings, env_name) and _key_missing(name):
            misplaced[env_name] = name
    messages: list[CheckMessage] = []
    for attribute, name in sorted(misplaced.items()):
        where = f"{SETTINGS_NAME}['{name}']"
        if name in ENV_FALLBACKS:
            where += f" or the {ENV_FALLBACKS[name]} environment variable"
        messages.append(
            Warning(
                f"settings.{attribute} is not read by django-avaturn, whose settings are "
                f"in the {SETTINGS_NAME} dict.",
                hint=f"Set {where} instead.",
                id="django_avaturn.W008",
            )
        )
    return messages


def _key_missing(name: str) -> bool:
    try:
        return RULES[name].check(name, _setting(name)) is None and not _test_mode_on()
    except NotConfigured:
        return False  # set, but malformed: E003 says so


def _transcript_cap_warning() -> CheckMessage | None:
    names = ("TRANSCRIPTS_ENABLED", "TRANSCRIPT_MAX_LENGTH", "TRANSCRIPT_MAX_BYTES")
    try:
        for name in names:
            RULES[name].check(name, _setting(name))
    except NotConfigured:
        return None  # malformed: E003 says so
    enabled, length, size = (_setting(name) for name in names)
    if not enabled or size >= length:
        return None
    return Warning(
        f"AVATURN['TRANSCRIPT_MAX_BYTES'] ({size}) is less than AVATURN['TRANSCRIPT_MAX_LENGTH'] "
        f"({length} characters): a line of a length the API accepts may never fit in a "
        "session's transcript, and is refused (413).",
        hint="Allow at least TRANSCRIPT_MAX_LENGTH bytes; a character takes 1 to 4 in UTF-8.",
        id="django_avaturn.W011",
    )


def _key_warnings() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for name, env_name, service, check_id in (
        ("API_KEY", "AVATURN_API_KEY", "Avaturn", "django_avaturn.W001"),
        ("OPENAI_API_KEY", "OPENAI_API_KEY", "OpenAI", "django_avaturn.W002"),
    ):
        if _key_missing(name):  # (TEST_MODE uses the fake's keys)
            messages.append(
                Warning(
                    f"No {service} API key is configured; starting a session will answer 503.",
                    hint=f"Set the {env_name} environment variable or AVATURN['{name}'].",
                    id=check_id,
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


@register(Tags.urls)
def check_urls(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """The session API is reachable: the widget reverses its URLs on every page."""
    try:
        api_urls()
    except NoReverseMatch:
        return [
            Error(
                "The widget cannot find the session API: ROOT_URLCONF does not include "
                "django_avaturn.urls, so {% avaturn_head %} renders nothing.",
                hint=MISSING_INCLUDE,
                id="django_avaturn.E005",
            )
        ]
    except Exception:
        return []  # a URLconf that does not load: Django's own URL checks report it
    return []


@register()
def check_test_mode(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """TEST_MODE is never on unnoticed (W009), and never with DEBUG off (E006)."""
    if not _test_mode_on():
        return []
    if not settings.DEBUG:
        return [
            Error(
                "AVATURN['TEST_MODE'] is on with DEBUG off: avatar sessions go to a loopback "
                "fake of Avaturn and OpenAI, and visitors get a stand-in avatar.",
                hint="Remove TEST_MODE from production settings. A test run that wants it "
                "(Django's test runner turns DEBUG off) adds 'django_avaturn.E006' to "
                "SILENCED_SYSTEM_CHECKS.",
                id="django_avaturn.E006",
            )
        ]
    return [
        Warning(
            "AVATURN['TEST_MODE'] is on: avatar sessions go to a loopback fake of Avaturn "
            "and OpenAI, not to the real services.",
            hint="Remove TEST_MODE to talk to the real services.",
            id="django_avaturn.W009",
        )
    ]


# The top-level URLs python -m django_avaturn.testing prints for the fake.
_FAKE_URL_SETTINGS = ("API_URL", "OPENAI_BASE_URL", "SDK_API_HOST", "SDK_URL")


@register(Tags.security, deploy=True)
def check_deploy(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """``check --deploy``: with DEBUG off, no key or URL of the loopback fake's (W010)."""
    if settings.DEBUG:
        return []
    found = [
        f"AVATURN['{name}'] is its public test key"
        for name, test_key in (
            ("API_KEY", DEFAULT_AVATURN_API_KEY),
            ("OPENAI_API_KEY", DEFAULT_OPENAI_API_KEY),
        )
        if isinstance(_setting(name), str) and _setting(name).strip() == test_key
    ]
    cartesia = _section("CARTESIA") or {}
    if isinstance(key := cartesia.get("API_KEY"), str) and key.strip() == DEFAULT_CARTESIA_API_KEY:
        found.append("AVATURN['CARTESIA']['API_KEY'] is its public test key")
    urls = [(f"['{name}']", _setting(name)) for name in _FAKE_URL_SETTINGS]
    urls.append(("['CARTESIA']['API_URL']", cartesia.get("API_URL")))
    site = _section("SITE_ENGINE") or {}
    urls.append(("['SITE_ENGINE']['OPENAI_WEBSOCKET_URL']", site.get("OPENAI_WEBSOCKET_URL")))
    for name, url in urls:
        host = _url_host(url)
        if host is not None and is_loopback_host(host):
            found.append(f"AVATURN{name} is on loopback ({host})")
    if not found:
        return []
    return [
        Warning(
            "DEBUG is off, but AVATURN is set up for the loopback fake of the upstreams: "
            + "; ".join(found)
            + ".",
            hint="Production needs the real keys and the real upstream URLs (the defaults). "
            "If a proxy of your own listens on loopback, add 'django_avaturn.W010' to "
            "SILENCED_SYSTEM_CHECKS.",
            id="django_avaturn.W010",
        )
    ]


def _url_host(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return urlsplit(value).hostname
    except ValueError:
        return None  # malformed: E003 says so


@register()
def check_setup(app_configs: Sequence[AppConfig] | None, **kwargs: Any) -> list[CheckMessage]:
    """What the rest of the project must provide for the settings to hold (W005 to W007, W012)."""
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
        id="django_avaturn.W012",
    )


def _sqlite_warning() -> CheckMessage | None:
    alias = sessions_database()
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
        hint=(
            f'Add "OPTIONS": {{"transaction_mode": "IMMEDIATE", "timeout": 20}} '
            f"to DATABASES[{alias!r}]."
        ),
        id="django_avaturn.W006",
    )


def _context_processor_warning() -> CheckMessage | None:
    """The widget finds no CSRF token by either of its two routes.

    It sends the CSRF cookie when JavaScript can read it, else the token the
    tag rendered; the tag renders one only when it finds the request in the
    template's context (the ``request`` context processor puts it there).
    """
    unreadable = [
        name for name in ("CSRF_USE_SESSIONS", "CSRF_COOKIE_HTTPONLY") if getattr(settings, name)
    ]
    if not unreadable:
        return None
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
        f"{' and '.join(unreadable)} keep the CSRF token from the widget's script, and no "
        f"Django template engine has the {processor!r} context processor: "
        "{% avaturn_head %} renders the token only in a template whose context holds "
        "the request; elsewhere Start answers 403.",
        hint=f"Add {processor!r} to TEMPLATES[...]['OPTIONS']['context_processors'], "
        "or pass the request in the template's context.",
        id="django_avaturn.W007",
    )
