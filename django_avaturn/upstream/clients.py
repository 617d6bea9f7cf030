"""The process-wide upstream clients, built from settings and reused.

One ``openai.OpenAI`` and one ``requests.Session`` per process keep upstream
connections warm: building them per request costs tens of milliseconds and
a new TLS handshake each time (see benchmarks/). They are rebuilt whenever
the ``AVATURN`` setting changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx2
import openai
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.views.decorators.debug import sensitive_variables

from django_avaturn.conf import SETTINGS_NAME, avaturn_settings
from django_avaturn.exceptions import NotConfigured
from django_avaturn.upstream.avaturn import AvaturnClient
from django_avaturn.upstream.cartesia import CartesiaClient
from django_avaturn.upstream.openai import RealtimeSecrets, with_deadline

_Client = TypeVar("_Client")

# The OpenAI SDK's longest wait between two retries: it honours a server's
# Retry-After up to two minutes (its MAX_RETRY_AFTER_DELAY), and waits at
# most 8 s when the answer names none.
OPENAI_RETRY_WAIT = 120.0
# For the database work around a start's upstream calls (lock waits included):
# every bound below on how long a start runs adds it once.
START_MARGIN = 30.0

_lock = threading.Lock()
_openai: RealtimeSecrets | None = None
_avaturn: AvaturnClient | None = None
_cartesia: CartesiaClient | None = None


@sensitive_variables("value")
def _require(name: str, env_name: str) -> str:
    value: str | None = getattr(avaturn_settings, name)  # cleaned (see validation.clean_key)
    if value is None:
        raise NotConfigured(
            f"AVATURN['{name}'] is not set and the {env_name} environment variable is empty."
        )
    return value


def get_openai_secrets() -> RealtimeSecrets:
    global _openai
    with _lock:
        if _openai is None:
            _openai = _build(_build_openai_secrets, "OpenAI")
        return _openai


def get_avaturn_client() -> AvaturnClient:
    global _avaturn
    with _lock:
        if _avaturn is None:
            _avaturn = _build(_build_avaturn_client, "Avaturn")
        return _avaturn


def get_cartesia_client() -> CartesiaClient:
    global _cartesia
    with _lock:
        if _cartesia is None:
            _cartesia = _build(_build_cartesia_client, "Cartesia")
        return _cartesia


def _build(builder: Callable[[], _Client], service: str) -> _Client:
    """Build a client; any failure is ``NotConfigured``, with nothing chained.

    The constructors hold the API key in their frames: an exception escaping
    one would show it on Django's debug page, or in an error report.
    """
    try:
        return builder()
    except NotConfigured:
        raise
    except Exception as exc:
        raise NotConfigured(
            f"The {service} client could not be built from the AVATURN settings "
            f"({type(exc).__name__}); check its URL and HTTP client settings."
        ) from None


@sensitive_variables()
def _build_openai_secrets() -> RealtimeSecrets:
    # Every setting first: a refusal then leaves no HTTP client's pool open.
    api_key = _require("OPENAI_API_KEY", "OPENAI_API_KEY")
    base_url = avaturn_settings.OPENAI_BASE_URL
    timeout = avaturn_settings.OPENAI_TIMEOUT
    max_retries = avaturn_settings.OPENAI_MAX_RETRIES
    factory = avaturn_settings.OPENAI_HTTP_CLIENT
    http_client = factory() if factory is not None else openai.DefaultHttpxClient()
    if not isinstance(http_client, httpx2.Client):
        raise NotConfigured(
            "AVATURN['OPENAI_HTTP_CLIENT'] must return an httpx2.Client, "
            f"not {type(http_client).__name__}."
        )
    client = openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=max_retries,
        # A deadline for the whole answer, not only for each read.
        http_client=with_deadline(http_client, timeout),
    )
    return RealtimeSecrets(client)


@sensitive_variables()
def _build_avaturn_client() -> AvaturnClient:
    return AvaturnClient(
        base_url=avaturn_settings.API_URL,
        api_key=_require("API_KEY", "AVATURN_API_KEY"),
        connect_timeout=avaturn_settings.AVATURN_CONNECT_TIMEOUT,
        read_timeout=avaturn_settings.AVATURN_TIMEOUT,
        terminate_retries=avaturn_settings.TERMINATE_RETRIES,
        retry_backoff=avaturn_settings.TERMINATE_RETRY_BACKOFF,
    )


@sensitive_variables()
def _build_cartesia_client() -> CartesiaClient:
    section = avaturn_settings.CARTESIA  # (read anew: the key may come from the environment)
    api_key = section["API_KEY"]
    if api_key is None:
        raise NotConfigured(
            "AVATURN['CARTESIA']['API_KEY'] is not set and the CARTESIA_API_KEY "
            "environment variable is empty."
        )
    return CartesiaClient(
        base_url=section["API_URL"],
        api_key=api_key,
        version=section["VERSION"],
        connect_timeout=avaturn_settings.AVATURN_CONNECT_TIMEOUT,
        read_timeout=avaturn_settings.AVATURN_TIMEOUT,
    )


def longest_terminate() -> float:
    """Seconds one Avaturn terminate may take: every attempt to its deadline, and the backoffs.

    As ``AvaturnClient.terminate_session`` makes them: ``TERMINATE_RETRIES``
    retries, each attempt bounded by connect plus read timeout, waiting
    ``TERMINATE_RETRY_BACKOFF`` doubled each time in between.
    """
    attempt = avaturn_settings.AVATURN_CONNECT_TIMEOUT + avaturn_settings.AVATURN_TIMEOUT
    retries = avaturn_settings.TERMINATE_RETRIES
    backoff = avaturn_settings.TERMINATE_RETRY_BACKOFF
    return (retries + 1) * attempt + backoff * ((1 << retries) - 1)


def longest_mint() -> float:
    """Seconds minting an OpenAI client secret may take: every attempt, and the waits between."""
    retries = avaturn_settings.OPENAI_MAX_RETRIES
    return (retries + 1) * avaturn_settings.OPENAI_TIMEOUT + retries * OPENAI_RETRY_WAIT


def longest_create() -> float:
    """Seconds Avaturn's create may take (one attempt, never retried)."""
    return avaturn_settings.AVATURN_CONNECT_TIMEOUT + avaturn_settings.AVATURN_TIMEOUT


def longest_credential() -> float:
    """Seconds minting a start's engine credential may take.

    The OpenAI client secret (``longest_mint``) where only openai-realtime can
    be chosen; else a Cartesia token may be minted instead, one call within an
    Avaturn call's deadline (the external engine's HOOK is the site's own
    code, which no setting bounds).
    """
    only_openai = (
        avaturn_settings.ENGINE == "openai-realtime"
        and avaturn_settings.SESSION_CONFIG_HOOK is None
    )
    return longest_mint() if only_openai else max(longest_mint(), longest_create())


def longest_start_calls() -> float:
    """Seconds of a start's upstream calls once it stops waiting for other rows.

    Its credential, its create, and the terminate of what it created when its
    row was claimed meanwhile. A start waits for the user's ending rows at most
    this long too (``sessions.starting._wait_for_ends``).
    """
    return longest_credential() + longest_create() + longest_terminate()


def longest_in_flight() -> float:
    """The latest after its reservation that a start may still make an upstream call.

    It terminates the sessions it replaces (all at once: one terminate's
    time), waits for the user's other ending rows (at most
    ``longest_start_calls()``), then makes its own calls; plus
    ``START_MARGIN`` for the database work between.
    """
    return longest_terminate() + 2 * longest_start_calls() + START_MARGIN


def longest_start() -> float:
    """Seconds a start may keep its row ``starting``: its upstream calls, plus ``START_MARGIN``.

    In order (``services.start_session``): ending the session it replaces
    (with ``ON_SESSION_LIMIT = "end_oldest"``), minting the engine's credential
    (the OpenAI client secret: ``OPENAI_MAX_RETRIES`` retries of up to
    ``OPENAI_TIMEOUT`` each; a Cartesia token: one Avaturn-length call), and
    Avaturn's create (one attempt, never retried). A row starting longer
    belongs to a process that died; the expiry command fails it.
    """
    replaced = longest_terminate() if avaturn_settings.ON_SESSION_LIMIT == "end_oldest" else 0
    return replaced + longest_credential() + longest_create() + START_MARGIN


def unknown_outcome_hold() -> float:
    """Seconds after a create's outcome became unknown that its session may still run.

    A create with no usable answer (``UpstreamError.may_be_running``) may have
    started a session nobody can name, so nobody can end it. The row is held
    once the client has given up on the create (the row's ``updated_at``), so
    Avaturn created nothing after that but what it was still processing
    (``START_MARGIN``), and it ends a session no browser joined after
    ``USER_ABSENT_TIMEOUT`` (its token never reached one). Until then the row
    holds its slot under both caps.
    """
    return START_MARGIN + avaturn_settings.USER_ABSENT_TIMEOUT


def reset_clients() -> None:
    """Drop the cached clients (settings changed, or a key was rotated)."""
    global _openai, _avaturn, _cartesia
    with _lock:
        # Close, not just drop: a dropped client's pooled sockets linger until collected.
        for client in (_avaturn, _openai, _cartesia):
            if client is not None:
                client.close()
        _openai = None
        _avaturn = None
        _cartesia = None


@receiver(setting_changed)
def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    # Clients are built from AVATURN (keys, timeouts, pool sizes): a change rebuilds them.
    if setting == SETTINGS_NAME:
        reset_clients()
