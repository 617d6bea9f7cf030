"""Upstream-shaped bodies and request validation, free of any state."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .records import Reply

CLIENT_SECRET_MIN_SECONDS = 10
CLIENT_SECRET_MAX_SECONDS = 7200
CLIENT_SECRET_DEFAULT_SECONDS = 600
MAX_DURATION_RANGE = (60, 86400)
ACCESS_TOKEN_DEFAULT_SECONDS = 60
ACCESS_TOKEN_MAX_SECONDS = 3600
USER_ABSENT_TIMEOUT_MIN = 10

# What OpenAI fills in for a GA realtime session the caller left unspecified.
_SESSION_DEFAULTS: Mapping[str, Any] = {
    "type": "realtime",
    "object": "realtime.session",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "",
    "tools": [],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "tracing": None,
    "truncation": "auto",
    "prompt": None,
    "include": None,
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "create_response": True,
                "interrupt_response": True,
                "idle_timeout_ms": None,
            },
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
    },
}


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, encode(payload))


def parse_json(body: bytes) -> Any:
    """The body as JSON, or None when empty or unparseable."""
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def openai_error(status: int, message: str, code: str | None, param: str | None = None) -> Reply:
    return json_reply(
        status,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": code,
            }
        },
    )


def detail(status: int, message: str) -> Reply:
    """Avaturn answers errors FastAPI-style, with a `detail`."""
    return json_reply(status, {"detail": message})


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def effective_session(
    requested: Mapping[str, Any], session_id: str, expires_at: int
) -> dict[str, Any]:
    session = deep_merge(_SESSION_DEFAULTS, requested)
    session.update(
        {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "expires_at": expires_at,
        }
    )
    return session


def client_secret_problem(payload: Any) -> Reply | None:
    """The 400 OpenAI would give this client-secret request, or None if it is valid."""
    if not isinstance(payload, dict):
        return openai_error(400, "We could not parse the JSON body of your request.", None)
    session = payload.get("session")
    if not isinstance(session, dict) or session.get("type") != "realtime":
        return openai_error(
            400,
            "Invalid value for 'session.type': expected 'realtime'.",
            "invalid_value",
            "session.type",
        )
    expires_after = payload.get("expires_after")
    if expires_after is None:
        return None
    if not isinstance(expires_after, dict):
        return openai_error(
            400, "'expires_after' must be an object.", "invalid_type", "expires_after"
        )
    if expires_after.get("anchor", "created_at") != "created_at":
        return openai_error(
            400,
            "Invalid value for 'expires_after.anchor': expected 'created_at'.",
            "invalid_value",
            "expires_after.anchor",
        )
    seconds = expires_after.get("seconds", CLIENT_SECRET_DEFAULT_SECONDS)
    if not is_int(seconds) or not (
        CLIENT_SECRET_MIN_SECONDS <= seconds <= CLIENT_SECRET_MAX_SECONDS
    ):
        return openai_error(
            400,
            f"Invalid 'expires_after.seconds': must be an integer between "
            f"{CLIENT_SECRET_MIN_SECONDS} and {CLIENT_SECRET_MAX_SECONDS}.",
            "invalid_value",
            "expires_after.seconds",
        )
    return None


def client_secret_seconds(payload: Mapping[str, Any]) -> int:
    expires_after = payload.get("expires_after") or {}
    seconds = expires_after.get("seconds", CLIENT_SECRET_DEFAULT_SECONDS)
    return int(seconds)


def create_body_problem(payload: Any) -> Reply | None:
    """The 422 Avaturn would give this create-session body's shape, or None."""
    if not isinstance(payload, dict):
        return detail(422, "The request body must be a JSON object.")
    engine = payload.get("conversation_engine")
    if not isinstance(engine, dict):
        return detail(422, "conversation_engine: field required")
    problem = engine_problem(engine)
    if problem is not None:
        return problem
    if "avatar_id" in payload and not isinstance(payload["avatar_id"], str):
        return detail(422, "avatar_id: must be a string")
    low, high = MAX_DURATION_RANGE
    if "max_duration" in payload:
        value = payload["max_duration"]
        if not is_int(value) or not low <= value <= high:
            return detail(422, f"max_duration: must be an integer from {low} to {high}")
    if "user_absent_timeout" in payload:
        value = payload["user_absent_timeout"]
        if not is_int(value) or value < USER_ABSENT_TIMEOUT_MIN:
            return detail(
                422,
                f"user_absent_timeout: must be an integer of at least {USER_ABSENT_TIMEOUT_MIN}",
            )
    return None


ENGINE_FIELDS: Mapping[str, tuple[str, ...]] = {
    "openai-realtime": ("client_secret",),
    "cartesia": ("access_token", "agent_id"),
    "external": ("url",),
    "text-echo": (),
}
EXTERNAL_SAMPLE_RATES = (16000, 24000)
TTS_ENGINES = ("elevenlabs", "google")


def engine_problem(engine: Mapping[str, Any]) -> Reply | None:
    """The 422 Avaturn would give this ``conversation_engine`` object's shape, or None."""
    kind = engine.get("type")
    if not isinstance(kind, str) or kind not in ENGINE_FIELDS:
        return detail(422, f"conversation_engine.type: must be one of {sorted(ENGINE_FIELDS)}")
    for name in ENGINE_FIELDS[kind]:
        if not isinstance(engine.get(name), str) or not engine[name]:
            return detail(422, f"conversation_engine.{name}: field required")
    if kind == "external":
        if not engine["url"].startswith(("ws://", "wss://")):
            return detail(422, "conversation_engine.url: must be a ws:// or wss:// URL")
        headers = engine.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(value, str) for value in headers.values()
        ):
            return detail(422, "conversation_engine.headers: must map names to strings")
        audio = engine.get("audio", {})
        rate = audio.get("user", {}).get("sample_rate", 24000) if isinstance(audio, dict) else None
        if rate not in EXTERNAL_SAMPLE_RATES:
            return detail(422, "conversation_engine.audio.user.sample_rate: 16000 or 24000")
    if kind == "text-echo":
        tts = engine.get("tts")
        if (
            not isinstance(tts, dict)
            or tts.get("engine") not in TTS_ENGINES
            or not isinstance(tts.get("voice_id"), str)
        ):
            return detail(422, "conversation_engine.tts: {engine, voice_id} required")
    return None


def access_token_problem(payload: Any) -> Reply | None:
    """The 400 Cartesia would give this access-token request, or None if it is valid."""
    if not isinstance(payload, dict):
        return detail(400, "The request body must be a JSON object.")
    grants = payload.get("grants")
    if not isinstance(grants, dict) or not grants or set(grants) - {"agent", "stt", "tts"}:
        return detail(400, "grants: an object of agent, stt and tts flags is required")
    seconds = payload.get("expires_in", ACCESS_TOKEN_DEFAULT_SECONDS)
    if not is_int(seconds) or not 1 <= seconds <= ACCESS_TOKEN_MAX_SECONDS:
        return detail(400, f"expires_in: must be an integer from 1 to {ACCESS_TOKEN_MAX_SECONDS}")
    return None


def default_fault_body(route_is_openai: bool, status: int) -> bytes:
    if route_is_openai:
        return openai_error(status, "Injected failure (fake upstream).", "fake_fault").body
    return detail(status, "Injected failure (fake upstream).").body


def fault_body(body: Any) -> bytes | None:
    """A fault body given as bytes, text or anything JSON-encodable."""
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return encode(body)


def malformed(body: bytes) -> bytes:
    """A truncated copy of a JSON body: starts like JSON, never parses."""
    return body[: len(body) // 2] if len(body) > 2 else b"{"


MISSING_FIELDS_BODY = encode({"unexpected": "the fake left out every expected field"})
