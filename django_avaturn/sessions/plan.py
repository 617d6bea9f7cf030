"""What a new session is made of: settings, the per-request hook, the visitor's choice.

The visitor may choose only an avatar from ``ALLOWED_AVATARS`` and a widget
config name; instructions, model, voice and engine come from the server
(settings, then the ``SESSION_CONFIG_HOOK``), never from the request body.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import CharField
from django.http import HttpRequest

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.logs import site_code_failed
from django_avaturn.models import Session
from django_avaturn.validation import check_session_shape, plain_json

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)


# What a SESSION_CONFIG_HOOK may return; anything else is a configuration error.
HOOK_KEYS = frozenset(
    {
        "instructions",
        "model",
        "voice",
        "avatar_id",
        "realtime_session",
        "max_duration",
        "engine",
        "cartesia",
        "external_engine",
        "text_echo",
        "site_engine",
    }
)
# What the hook may return for OpenAI Realtime (the openai-realtime and site engines).
REALTIME_KEYS = frozenset({"instructions", "model", "voice", "realtime_session"})
# Per engine: the hook's key, the setting it overrides, and the sub-keys it may set
# (the keys and the external engine's hook stay in settings).
ENGINE_OPTIONS: dict[str, tuple[str, str, frozenset[str]]] = {
    "cartesia": ("cartesia", "CARTESIA", frozenset({"AGENT_ID"})),
    "external": (
        "external_engine",
        "EXTERNAL_ENGINE",
        frozenset({"URL", "HEADERS", "SAMPLE_RATE"}),
    ),
    "text-echo": ("text_echo", "TEXT_ECHO", frozenset({"TTS_ENGINE", "VOICE_ID"})),
    "site": ("site_engine", "SITE_ENGINE", frozenset({"TOOLS"})),
}


@dataclass
class SessionPlan:
    """Everything needed to start one session, before any money is spent."""

    realtime_session: dict[str, Any]
    client_secret_ttl: int
    avaturn_options: dict[str, Any]
    avatar_id: str
    model: str
    voice: str
    config_name: str
    max_duration: int | None
    engine: str = "openai-realtime"
    # The chosen engine's section (CARTESIA, EXTERNAL_ENGINE, TEXT_ECHO or SITE_ENGINE), validated,
    # with the hook's options applied; empty for openai-realtime. It may hold the
    # external engine's headers: never in a repr.
    engine_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def avaturn_payload(self, client_secret: str) -> dict[str, Any]:
        """The create body for an openai-realtime session with this client secret."""
        return self.payload_with({"type": "openai-realtime", "client_secret": client_secret})

    def payload_with(self, conversation_engine: Mapping[str, Any]) -> dict[str, Any]:
        """The create body, with the engine object the start's credential step made."""
        payload = dict(self.avaturn_options)
        payload["conversation_engine"] = dict(conversation_engine)
        return payload


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``, recursing into nested dicts."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _call_hook(request: HttpRequest | None, config_name: str) -> dict[str, Any]:
    hook: Callable[..., Any] | None = avaturn_settings.SESSION_CONFIG_HOOK
    if hook is None:
        return {}
    try:
        result = hook(request, config_name or None)
    except Exception:
        raise site_code_failed("SESSION_CONFIG_HOOK") from None
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise NotConfigured("SESSION_CONFIG_HOOK must return a dict or None.")
    unknown = set(result) - HOOK_KEYS
    if unknown:
        raise NotConfigured(
            f"SESSION_CONFIG_HOOK returned unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(HOOK_KEYS)}."
        )
    return dict(result)


def _overridden(overrides: Mapping[str, Any], key: str, name: str) -> Any:
    """The hook's ``key`` if it returned one, else the setting ``name``; through ``name``'s rule."""
    if key in overrides:
        return avaturn_settings.validate(name, overrides[key])
    return getattr(avaturn_settings, name)


def build_plan(
    *,
    request: HttpRequest | None = None,
    avatar_id: str | None = None,
    config_name: str = "",
) -> SessionPlan:
    """Resolve settings, hook and visitor choice into a validated ``SessionPlan``.

    Raises ``NotConfigured`` for any invalid value, before anything is sent upstream.
    """
    overrides = _call_hook(request, config_name)
    engine: str = _overridden(overrides, "engine", "ENGINE")

    realtime_session: dict[str, Any] = {}
    engine_options: dict[str, Any] = {}
    model = voice = ""
    if engine in ("openai-realtime", "site"):
        # The site engine opens OpenAI Realtime itself, with this session.
        realtime_session, model, voice = _realtime_session(overrides)
    if engine != "openai-realtime":
        engine_options = _engine_options(engine, overrides)
        if engine == "text-echo":
            voice = engine_options["VOICE_ID"] or ""
    _check_unused(overrides, engine)

    # The visitor's choice (from the allow-list), else the hook's, else AVATAR_ID.
    chosen_avatar = avatar_id or _overridden(overrides, "avatar_id", "AVATAR_ID") or ""
    # The request may choose only from the allow-list (the hook is trusted).
    # Read on every start: a malformed setting fails every start alike.
    allowed = allowed_avatars()
    if avatar_id and avatar_id not in allowed:
        raise AvatarNotAllowed(avatar_id)

    ttl = avaturn_settings.CLIENT_SECRET_TTL
    # The hook may shorten (or lengthen) a session, within Avaturn's range.
    max_duration: int = _overridden(overrides, "max_duration", "MAX_DURATION")
    absent = avaturn_settings.USER_ABSENT_TIMEOUT

    options: dict[str, Any] = {"max_duration": max_duration, "user_absent_timeout": absent}
    if chosen_avatar:
        options["avatar_id"] = str(chosen_avatar)
    background = avaturn_settings.BACKGROUND
    if background:
        options["background"] = background
    render_model = avaturn_settings.RENDER_MODEL
    if render_model:
        options[avaturn_settings.RENDER_MODEL_FIELD] = render_model

    for row_field, value in (("avatar_id", str(chosen_avatar)), ("model", model), ("voice", voice)):
        if (problem := too_long_to_record(row_field, value)) is not None:
            raise NotConfigured(problem)

    return SessionPlan(
        realtime_session=realtime_session,
        client_secret_ttl=ttl,
        avaturn_options=options,
        avatar_id=str(chosen_avatar),
        model=model,
        voice=voice,
        config_name=config_name,
        max_duration=max_duration,
        engine=engine,
        engine_options=engine_options,
    )


def too_long_to_record(row_field: str, value: str) -> str | None:
    """Why ``value`` cannot be recorded in the session row's ``row_field``, or None.

    Settings, the session hook and ``REALTIME_SESSION`` may each give a value
    longer than the column holds; PostgreSQL would refuse the start's row, a
    database error on every start.
    """
    column = Session._meta.get_field(row_field)
    limit = column.max_length if isinstance(column, CharField) else None
    if limit is None or len(value) <= limit:
        return None
    return (
        f"The session's {row_field} is {len(value)} characters long; its row records "
        f"at most {limit}."
    )


def _check_unused(overrides: Mapping[str, Any], engine: str) -> None:
    """Check what the hook returned for engines other than ``engine`` all the same.

    A mistake there would otherwise surface only on the start that first
    chooses that engine, far from the change that made it.
    """
    if engine not in ("openai-realtime", "site") and not REALTIME_KEYS.isdisjoint(overrides):
        _realtime_session(overrides)
    for other, (hook_key, _, _) in ENGINE_OPTIONS.items():
        if other != engine and hook_key in overrides:
            _engine_options(other, overrides)


def realtime_session_from_settings() -> dict[str, Any]:
    """The OpenAI Realtime session the settings alone make (no hook, no request)."""
    return _realtime_session({})[0]


def recorded_model_and_voice_from_settings() -> tuple[str, str]:
    """The model and voice a start's row records by the settings alone.

    ``REALTIME_SESSION``'s own ``model`` and ``audio.output.voice`` win over
    ``MODEL`` and ``VOICE``, as sent.
    """
    _, model, voice = _realtime_session({})
    return model, voice


def _realtime_session(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], str, str]:
    """The OpenAI Realtime session to mint a secret for, with the model and voice it uses."""
    # Each the setting, or what the hook returned in its place, through the setting's rule.
    model: str = _overridden(overrides, "model", "MODEL")
    voice: str = _overridden(overrides, "voice", "VOICE")
    instructions: str = _overridden(overrides, "instructions", "INSTRUCTIONS")

    extra_session = avaturn_settings.REALTIME_SESSION
    hook_session = overrides.get("realtime_session") or {}
    if not isinstance(hook_session, Mapping):
        raise NotConfigured("REALTIME_SESSION must be a dict of GA session fields.")
    merged = deep_merge(
        {
            "type": "realtime",
            "model": model,
            "instructions": instructions,
            "audio": {"output": {"voice": voice}},
        },
        deep_merge(extra_session, hook_session),
    )
    check_session_shape(merged)  # (plain_json of it included)
    realtime_session: dict[str, Any] = plain_json(merged)
    # What the extra fields set wins over the shorthands, so record what is sent.
    model = str(realtime_session.get("model", model))
    voice = str(realtime_session["audio"]["output"].get("voice", voice))
    return realtime_session, model, voice


def _engine_options(engine: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The engine's settings section with the hook's options over it, through its rule."""
    hook_key, name, allowed = ENGINE_OPTIONS[engine]
    chosen = overrides.get(hook_key) or {}
    if not isinstance(chosen, Mapping) or set(chosen) - allowed:
        raise NotConfigured(
            f"SESSION_CONFIG_HOOK's {hook_key!r} must be a dict with keys among {sorted(allowed)}."
        )
    configured = avaturn_settings.raw(name)
    if configured is not None and not isinstance(configured, Mapping):
        avaturn_settings.validate(name, configured)  # raises, saying what is wrong
    base = configured if isinstance(configured, Mapping) else {}
    options: dict[str, Any] = avaturn_settings.validate(name, {**base, **chosen})
    # The Cartesia key stays with the client that uses it, out of the plan.
    options.pop("API_KEY", None)
    return options


def allowed_avatars() -> tuple[str, ...]:
    """The avatars a request may choose: ``AVATAR_ID`` and ``ALLOWED_AVATARS``."""
    default, listed = avaturn_settings.AVATAR_ID, avaturn_settings.ALLOWED_AVATARS
    return (default, *listed) if default else listed


class AvatarNotAllowed(ValueError):
    """The request asked for an avatar outside ``ALLOWED_AVATARS``."""

    def __init__(self, avatar_id: str) -> None:
        super().__init__(f"Avatar {avatar_id!r} is not allowed.")
        self.avatar_id = avatar_id
