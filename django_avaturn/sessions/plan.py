"""What a new session is made of: settings, the per-request hook, the visitor's choice.

The visitor may choose only an avatar from ``ALLOWED_AVATARS`` and a widget
config name; instructions, model, voice and engine come from the server
(settings, then the ``SESSION_CONFIG_HOOK``), never from the request body.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.validation import (
    check_int,
    choice_setting,
    required_choice_setting,
    required_int_setting,
)

logger = logging.getLogger(__name__)

OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)


# What a SESSION_CONFIG_HOOK may return; anything else is a configuration error.
HOOK_KEYS = frozenset(
    {"instructions", "model", "voice", "avatar_id", "realtime_session", "max_duration"}
)


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

    def avaturn_payload(self, client_secret: str) -> dict[str, Any]:
        payload = dict(self.avaturn_options)
        payload["conversation_engine"] = {"type": "openai-realtime", "client_secret": client_secret}
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


# The shorthands a start sends as text, and whether each may be empty.
TEXT_SETTINGS = {"MODEL": False, "VOICE": False, "INSTRUCTIONS": True}


def check_text_setting(name: str, value: object) -> None:
    """``NotConfigured`` unless ``value`` can be sent as ``name`` (the check uses it too)."""
    if not isinstance(value, str) or (not value and not TEXT_SETTINGS[name]):
        wanted = "a string" if TEXT_SETTINGS[name] else "a non-empty string"
        # The type, not the value: a misplaced prompt could be pages long.
        got = "an empty string" if value == "" else type(value).__name__
        raise NotConfigured(f"{name} must be {wanted}, not {got}.")


def _call_hook(request: HttpRequest | None, config_name: str) -> dict[str, Any]:
    hook: Callable[..., Any] | None = avaturn_settings.SESSION_CONFIG_HOOK
    if hook is None:
        return {}
    try:
        result = hook(request, config_name or None)
    except Exception as exc:
        # The site's own code failed: log its traceback, answer a JSON 503, not a 500.
        logger.exception("SESSION_CONFIG_HOOK raised")
        raise NotConfigured("SESSION_CONFIG_HOOK raised an exception.") from exc
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

    model = overrides.get("model", avaturn_settings.MODEL)
    voice = overrides.get("voice", avaturn_settings.VOICE)
    instructions = overrides.get("instructions", avaturn_settings.INSTRUCTIONS)
    for name, value in (("MODEL", model), ("VOICE", voice), ("INSTRUCTIONS", instructions)):
        check_text_setting(name, value)

    extra_session = avaturn_settings.REALTIME_SESSION or {}
    hook_session = overrides.get("realtime_session") or {}
    if not isinstance(extra_session, Mapping) or not isinstance(hook_session, Mapping):
        raise NotConfigured("REALTIME_SESSION must be a dict of GA session fields.")
    realtime_session = deep_merge(
        {
            "type": "realtime",
            "model": model,
            "instructions": instructions,
            "audio": {"output": {"voice": voice}},
        },
        deep_merge(extra_session, hook_session),
    )
    check_session_shape(realtime_session)
    # What the extra fields set wins over the shorthands, so record what is sent.
    model = str(realtime_session.get("model", model))
    voice = str(realtime_session["audio"]["output"].get("voice", voice))

    chosen_avatar = avatar_id or overrides.get("avatar_id") or avaturn_settings.AVATAR_ID or ""
    # The request may choose only from the allow-list (the hook is trusted).
    allowed = (avaturn_settings.AVATAR_ID, *(avaturn_settings.ALLOWED_AVATARS or ()))
    if avatar_id and avatar_id not in allowed:
        raise AvatarNotAllowed(avatar_id)

    ttl = required_int_setting("CLIENT_SECRET_TTL")
    # The hook may shorten (or lengthen) a session, within Avaturn's range.
    max_duration = check_int(
        "MAX_DURATION", overrides.get("max_duration", avaturn_settings.MAX_DURATION)
    )
    absent = required_int_setting("USER_ABSENT_TIMEOUT")

    options: dict[str, Any] = {"max_duration": max_duration, "user_absent_timeout": absent}
    if chosen_avatar:
        options["avatar_id"] = str(chosen_avatar)
    background = choice_setting("BACKGROUND")
    if background:
        options["background"] = background
    render_model = choice_setting("RENDER_MODEL")
    if render_model:
        options[required_choice_setting("RENDER_MODEL_FIELD")] = render_model

    return SessionPlan(
        realtime_session=realtime_session,
        client_secret_ttl=ttl,
        avaturn_options=options,
        avatar_id=str(chosen_avatar),
        model=model,
        voice=voice,
        config_name=config_name,
        max_duration=max_duration,
    )


def check_session_shape(session: Mapping[str, Any]) -> None:
    """``NotConfigured`` unless ``session`` is a GA realtime session we can read.

    The merged session is read back (``audio.output.voice``): a scalar where a
    dict belongs would fail there with an AttributeError, a 500.
    """
    if session.get("type", "realtime") != "realtime":
        # Avaturn only drives GA realtime sessions; anything else fails to start.
        raise NotConfigured('REALTIME_SESSION "type" must be "realtime".')
    audio = session.get("audio", {})
    if not isinstance(audio, Mapping) or not isinstance(audio.get("output", {}), Mapping):
        raise NotConfigured('REALTIME_SESSION "audio" and "audio.output" must be dicts.')


class AvatarNotAllowed(ValueError):
    """The request asked for an avatar outside ``ALLOWED_AVATARS``."""

    def __init__(self, avatar_id: str) -> None:
        super().__init__(f"Avatar {avatar_id!r} is not allowed.")
        self.avatar_id = avatar_id
