"""Minting OpenAI Realtime client secrets through the official SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from django_avaturn.exceptions import UpstreamError, UpstreamTimeout
from django_avaturn.logs import get_logger
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)

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

    def close(self) -> None:
        self._client.close()

    def mint(self, *, session: dict[str, Any], ttl_seconds: int) -> ClientSecret:
        operation = "client_secrets.create"
        # Every error below is raised unchained (``from None``): the SDK's
        # message quotes the answer unscrubbed (an answer can echo the key),
        # and Django's error pages print the variables of a cause's frames.
        try:
            response = self._client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": ttl_seconds},
                # The session is already the JSON the endpoint takes (its
                # request types declare no aliases or formats). Passed as the
                # declared parameter, the SDK would walk it against those
                # types key by key, changing nothing, for a measurable share
                # of a start's CPU (``python -m benchmarks.profile``).
                extra_body={"session": session},
            )
        except openai.APITimeoutError:
            raise UpstreamTimeout(service=SERVICE, operation=operation) from None
        except openai.APIStatusError as exc:
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=exc.status_code,
                body_excerpt=excerpt(exc.response.content),
            ) from None
        except openai.APIConnectionError:
            raise UpstreamError(service=SERVICE, operation=operation) from None
        except (openai.OpenAIError, ValueError, RecursionError) as exc:
            # A 200 with a body that is not JSON escapes the SDK as a bare
            # JSONDecodeError (a ValueError), one nested too deep as a
            # RecursionError, not as one of its own errors.
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=None if isinstance(exc, openai.OpenAIError) else 200,
                body_excerpt="unparseable answer: " + type(exc).__name__,
            ) from None
        value = getattr(response, "value", None)
        expires_at = getattr(response, "expires_at", None)
        if not isinstance(value, str) or not value or not isinstance(expires_at, int):
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=200,
                body_excerpt="answer lacks value or expires_at",
            )
        if not _plausible_expiry(expires_at):
            # Milliseconds, say: the start would record a nonsense expiry (or
            # fail to convert it) after Avaturn had started billing.
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=200,
                body_excerpt=f"answer's expires_at is not a time in the next day: {expires_at}",
            )
        return ClientSecret(value=value, expires_at=expires_at)


def _plausible_expiry(expires_at: int) -> bool:
    """A Unix time in seconds within a day of now (the longest TTL is 2 hours).

    The minutes either side allow for a clock that differs from OpenAI's;
    what this refuses is milliseconds, or no time at all.
    """
    now = time.time()
    return now - _CLOCK_SKEW_SECONDS < expires_at <= now + 86_400 + _CLOCK_SKEW_SECONDS


_CLOCK_SKEW_SECONDS = 300


_DEADLINE = "django_avaturn.deadline"


def with_deadline(client: httpx2.Client, seconds: float) -> httpx2.Client:
    """Give every request ``client`` sends a deadline for its whole answer.

    httpx applies its read timeout to each socket read, so an answer that
    drips a byte at a time never times out. The deadline is checked between
    the chunks of the body and raises ``httpx2.ReadTimeout``, which the SDK
    turns into ``openai.APITimeoutError`` like any other timeout. Event hooks
    are public API, so this works on any client, including one from
    ``OPENAI_HTTP_CLIENT``.
    """

    def start(request: httpx2.Request) -> None:
        request.extensions[_DEADLINE] = time.monotonic() + seconds

    def bound(response: httpx2.Response) -> None:
        deadline = response.request.extensions.get(_DEADLINE)
        if isinstance(deadline, float) and isinstance(response.stream, httpx2.SyncByteStream):
            response.stream = _DeadlineStream(response.stream, deadline, response.request)

    hooks = client.event_hooks
    client.event_hooks = {
        "request": [*hooks.get("request", []), start],
        "response": [*hooks.get("response", []), bound],
    }
    return client


class _DeadlineStream(httpx2.SyncByteStream):
    def __init__(
        self, inner: httpx2.SyncByteStream, deadline: float, request: httpx2.Request
    ) -> None:
        self._inner = inner
        self._deadline = deadline
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout("the answer did not arrive in time", request=self._request)
            yield chunk

    def close(self) -> None:
        self._inner.close()
