"""The process-wide upstream clients, built from settings and reused.

One ``openai.OpenAI`` and one ``requests.Session`` per process keep upstream
connections warm: building them per request costs tens of milliseconds and
a new TLS handshake each time (see benchmarks/). They are rebuilt whenever
the ``AVATURN`` setting changes.
"""

from __future__ import annotations

import threading

import openai

from django_avaturn.avaturn_client import AvaturnClient
from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.openai_client import RealtimeSecrets, with_deadline
from django_avaturn.validation import required_int_setting, seconds_setting

_lock = threading.Lock()
_openai: RealtimeSecrets | None = None
_avaturn: AvaturnClient | None = None


def _require(name: str, env_name: str) -> str:
    value: object = avaturn_settings.raw(name)
    if not value or not isinstance(value, str):
        raise NotConfigured(
            f"AVATURN['{name}'] is not set and the {env_name} environment variable is empty."
        )
    return value


def get_openai_secrets() -> RealtimeSecrets:
    global _openai
    with _lock:
        if _openai is None:
            factory = avaturn_settings.OPENAI_HTTP_CLIENT
            timeout = seconds_setting("OPENAI_TIMEOUT")
            http_client = factory() if factory is not None else openai.DefaultHttpxClient()
            client = openai.OpenAI(
                api_key=_require("OPENAI_API_KEY", "OPENAI_API_KEY"),
                base_url=avaturn_settings.OPENAI_BASE_URL or None,
                timeout=timeout,
                max_retries=required_int_setting("OPENAI_MAX_RETRIES"),
                # A deadline for the whole answer, not only for each read.
                http_client=with_deadline(http_client, timeout),
            )
            _openai = RealtimeSecrets(client)
        return _openai


def get_avaturn_client() -> AvaturnClient:
    global _avaturn
    with _lock:
        if _avaturn is None:
            _avaturn = AvaturnClient(
                base_url=str(avaturn_settings.API_URL),
                api_key=_require("API_KEY", "AVATURN_API_KEY"),
                connect_timeout=seconds_setting("AVATURN_CONNECT_TIMEOUT"),
                read_timeout=seconds_setting("AVATURN_TIMEOUT"),
                terminate_retries=required_int_setting("TERMINATE_RETRIES"),
                retry_backoff=seconds_setting("TERMINATE_RETRY_BACKOFF"),
            )
        return _avaturn


def reset_clients() -> None:
    """Drop the cached clients (settings changed, or a key was rotated)."""
    global _openai, _avaturn
    with _lock:
        # Close, not just drop: a dropped client's pooled sockets linger until collected.
        if _avaturn is not None:
            _avaturn.close()
        if _openai is not None:
            _openai.close()
        _openai = None
        _avaturn = None
