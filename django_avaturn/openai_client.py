"""Minting OpenAI Realtime client secrets through the official SDK."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import openai

from django_avaturn.exceptions import UpstreamError, UpstreamTimeout
from django_avaturn.redaction import excerpt

logger = logging.getLogger(__name__)

SERVICE = "openai"


@dataclass(frozen=True)
class ClientSecret:
    """A short-lived secret: handed straight to Avaturn, never stored."""

    value: str
    expires_at: int

    def __repr__(self) -> str:
        return f"ClientSecret(value='[redacted]', expires_at={self.expires_at})"


class RealtimeSecrets:
    """Wraps one ``openai.OpenAI`` client, reused across requests for its connection pool."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<{type(self).__name__} base_url={str(self._client.base_url)!r}>"

    def mint(self, *, session: dict[str, Any], ttl_seconds: int) -> ClientSecret:
        operation = "client_secrets.create"
        try:
            response = self._client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": ttl_seconds},
                session=session,  # type: ignore[arg-type]  # a GA session dict, validated upstream
            )
        except openai.APITimeoutError as exc:
            raise UpstreamTimeout(service=SERVICE, operation=operation) from exc
        except openai.APIStatusError as exc:
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=exc.status_code,
                body_excerpt=excerpt(exc.response.content),
            ) from exc
        except openai.APIConnectionError as exc:
            raise UpstreamError(service=SERVICE, operation=operation) from exc
        except (openai.OpenAIError, ValueError) as exc:
            # A 200 with a body that is not JSON escapes the SDK as a bare
            # JSONDecodeError (a ValueError), not as one of its own errors.
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=200 if isinstance(exc, ValueError) else None,
                body_excerpt="unparseable answer: " + type(exc).__name__,
            ) from exc
        value = getattr(response, "value", None)
        expires_at = getattr(response, "expires_at", None)
        if not isinstance(value, str) or not value or not isinstance(expires_at, int):
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=200,
                body_excerpt="answer lacks value or expires_at",
            )
        return ClientSecret(value=value, expires_at=expires_at)
