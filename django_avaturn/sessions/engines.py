"""The credential step of a start, per conversation engine.

``require(plan)`` runs before a slot is reserved: it fails on missing keys
and settings (``NotConfigured``, nothing spent). ``resolve(plan, request)``
runs next, before the reservation too: it asks the site's own code what the
plan leaves to it (the external engine's ``HOOK``), so that code failing or
taking its time holds no slot and ends no session. ``prepare(plan,
request)`` runs after the reservation: it mints what the engine needs and
returns the ``conversation_engine`` object for Avaturn's create.
Credentials (the OpenAI client secret, the Cartesia access token, the
external engine's headers) go straight into that object and are never
stored, logged or shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.views.decorators.debug import sensitive_variables

from django_avaturn.engine import tokens
from django_avaturn.exceptions import NotConfigured
from django_avaturn.logs import site_code_failed
from django_avaturn.models import Engine, Session
from django_avaturn.sessions import transitions
from django_avaturn.sessions.plan import SessionPlan
from django_avaturn.upstream.clients import (
    get_cartesia_client,
    get_openai_secrets,
)
from django_avaturn.validation import Headers, SocketUrl

# Engines that do something with a task (``say``): Cartesia ignores tasks, and
# the external engine's protocol has no message for one.
TASK_ENGINES = frozenset({Engine.OPENAI_REALTIME, Engine.TEXT_ECHO})
# Engines whose SDK events carry transcripts to the page.
TRANSCRIPT_ENGINES = frozenset({Engine.OPENAI_REALTIME})


@dataclass(frozen=True)
class EngineCredential:
    """What the create sends as ``conversation_engine``, and when its secret expires, if known."""

    conversation_engine: dict[str, Any] = field(repr=False)
    expires_at: datetime | None


def require(plan: SessionPlan) -> None:
    """``NotConfigured`` unless the plan's engine has what a start needs; builds its client."""
    options = plan.engine_options
    if plan.engine == Engine.OPENAI_REALTIME:
        get_openai_secrets()
    elif plan.engine == Engine.CARTESIA:
        if not options.get("AGENT_ID"):
            raise NotConfigured(
                "AVATURN['CARTESIA']['AGENT_ID'] is not set (nor chosen by the hook)."
            )
        get_cartesia_client()
    elif plan.engine == Engine.EXTERNAL:
        if not options.get("URL") and options.get("HOOK") is None:
            raise NotConfigured(
                "AVATURN['EXTERNAL_ENGINE'] needs a URL or a HOOK (or the session hook's URL)."
            )
        if options.get("URL"):
            check_socket_url("AVATURN['EXTERNAL_ENGINE']['URL']", options["URL"])
    elif plan.engine == Engine.SITE:
        require_site_engine(options)
    elif plan.engine == Engine.TEXT_ECHO and not options.get("VOICE_ID"):
        raise NotConfigured("AVATURN['TEXT_ECHO']['VOICE_ID'] is not set (nor chosen by the hook).")


@sensitive_variables()
def resolve(plan: SessionPlan, request: HttpRequest | None) -> None:
    """Ask the external engine's ``HOOK`` for its URL and headers, into the plan.

    Before anything is reserved: ``NotConfigured`` when the hook raises or
    answers badly (nothing reserved, ended or spent). The plan then holds
    the answer as its ``URL`` and ``HEADERS``, and no ``HOOK``.
    """
    options = plan.engine_options
    if plan.engine == Engine.EXTERNAL and options.get("HOOK") is not None:
        url, headers = _external_socket(plan, request)
        options.update(URL=url, HEADERS=headers, HOOK=None)


def require_site_engine(options: Mapping[str, Any]) -> None:
    """What the site engine needs: Channels, its public URL, the OpenAI key, its tools."""
    try:
        import channels  # noqa: F401
    except ImportError:
        raise NotConfigured(
            "AVATURN['ENGINE'] 'site' needs Django Channels: pip install 'django-avaturn[engine]'."
        ) from None
    if not options.get("PUBLIC_URL"):
        raise NotConfigured("AVATURN['SITE_ENGINE']['PUBLIC_URL'] is not set.")
    check_socket_url("AVATURN['SITE_ENGINE']['PUBLIC_URL']", options["PUBLIC_URL"])
    # The engine opens OpenAI with the site's key: fail now, not when Avaturn connects.
    get_openai_secrets()
    from django_avaturn.engine.tools import load_registry

    load_registry(options.get("TOOLS") or [])


def check_socket_url(name: str, url: str) -> None:
    """``NotConfigured`` for a ``ws://`` URL outside DEBUG: the engine's audio is unencrypted."""
    if url.startswith("ws://") and not settings.DEBUG:
        raise NotConfigured(f"{name} must be a wss:// URL outside DEBUG.")


@sensitive_variables()
def prepare(
    plan: SessionPlan, request: HttpRequest | None, row: Session | None = None
) -> EngineCredential:
    """Mint the engine's credential; its ``conversation_engine`` object for Avaturn's create.

    ``row`` is the start's own row (still starting): the site engine's token
    names it and it keeps the hash of the socket's secret. Raises
    ``UpstreamError``/``UpstreamTimeout`` (a mint failed), ``NotConfigured``
    (the external engine has no usable URL; its HOOK was asked by ``resolve``) or
    ``StorageUnavailable`` (the site engine's hand-over could not be stored).
    """
    options = plan.engine_options
    if plan.engine == Engine.SITE:
        if row is None:
            raise ValueError("The site engine's credential names the start's row.")
        return _site_socket(plan, row)
    if plan.engine == Engine.OPENAI_REALTIME:
        secret = get_openai_secrets().mint(
            session=plan.realtime_session, ttl_seconds=plan.client_secret_ttl
        )
        return EngineCredential(
            {"type": "openai-realtime", "client_secret": secret.value},
            datetime.fromtimestamp(secret.expires_at, tz=dt_timezone.utc),
        )
    if plan.engine == Engine.CARTESIA:
        token = get_cartesia_client().mint_access_token(ttl_seconds=options["TOKEN_TTL"])
        # The token only admits the join; the session's own bound is max_duration.
        return EngineCredential(
            {"type": "cartesia", "access_token": token.token, "agent_id": options["AGENT_ID"]},
            None,
        )
    if plan.engine == Engine.EXTERNAL:
        url, headers = _external_socket(plan, request)
        engine: dict[str, Any] = {
            "type": "external",
            "url": url,
            "audio": {"user": {"sample_rate": options["SAMPLE_RATE"]}},
        }
        if headers:
            engine["headers"] = headers
        return EngineCredential(engine, None)
    return EngineCredential(
        {
            "type": "text-echo",
            "tts": {"engine": options["TTS_ENGINE"], "voice_id": options["VOICE_ID"]},
        },
        None,
    )


@sensitive_variables()
def _external_socket(plan: SessionPlan, request: HttpRequest | None) -> tuple[str, dict[str, str]]:
    """The external engine's URL and headers: from settings (and the session hook), or its HOOK.

    The HOOK's answer wins over the settings for the keys it returns. What
    the hook raises, and what its answer raises while it is read (a mapping
    of its own), is logged with its traceback (scrubbed, as every log line).
    """
    options = plan.engine_options
    url: str | None = options.get("URL")
    headers: dict[str, str] = dict(options.get("HEADERS") or {})
    hook = options.get("HOOK")
    if hook is not None:
        name = "AVATURN['EXTERNAL_ENGINE']['HOOK']"
        try:
            answer = hook(request, plan)
        except Exception:
            raise site_code_failed(name) from None
        try:
            if not isinstance(answer, Mapping) or set(answer) - {"url", "headers"}:
                raise NotConfigured(
                    f'{name} must return a dict with keys among ["headers", "url"].'
                )
            if answer.get("url"):
                url = SocketUrl().check(f"{name}'s url", answer["url"])
            if answer.get("headers") is not None:
                headers = {**headers, **Headers().check(f"{name}'s headers", answer["headers"])}
        except NotConfigured:
            raise
        except Exception:
            raise site_code_failed(f"Reading the answer of {name}") from None
    if not url:
        raise NotConfigured("The external engine has no URL (settings, session hook or HOOK).")
    check_socket_url("The external engine's URL", url)
    return url, headers


@sensitive_variables()
def _site_socket(plan: SessionPlan, row: Session) -> EngineCredential:
    """The ``external`` engine object pointing Avaturn at this site's own engine socket."""
    options = plan.engine_options
    credentials = tokens.mint(row.pk)
    transitions.store_engine_socket(
        row,
        credentials.secret_hash,
        tokens.engine_plan(plan.realtime_session, list(options.get("TOOLS") or [])),
    )
    return EngineCredential(
        {
            "type": "external",
            "url": tokens.socket_url(options["PUBLIC_URL"], credentials.token),
            "headers": {tokens.SECRET_HEADER: credentials.secret},
            # OpenAI Realtime's only PCM rate: nothing is resampled.
            "audio": {"user": {"sample_rate": 24000}},
        },
        None,
    )
