"""A small client for Cartesia's access-token endpoint over one pooled ``requests.Session``.

A Cartesia Line agent session at Avaturn needs an access token, minted per
start with the site's Cartesia key (``POST {API_URL}/access-token``), passed
straight to Avaturn's create and forgotten: never stored, logged or shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.views.decorators.debug import sensitive_variables

from django_avaturn.exceptions import UpstreamError
from django_avaturn.upstream.avaturn import PooledClient

SERVICE = "cartesia"


@dataclass(frozen=True)
class AccessToken:
    """A minted Cartesia access token: for Avaturn's create only."""

    token: str

    def __repr__(self) -> str:
        return "AccessToken(token='[redacted]')"


class CartesiaClient(PooledClient):
    """Mint Cartesia access tokens that let Avaturn talk to the site's Line agent.

    One attempt per start, within the same deadline as an Avaturn call: a
    token nobody uses costs nothing, but a start must not wait for retries.
    """

    service = SERVICE

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        version: str,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            headers={"Cartesia-Version": version},
        )

    @sensitive_variables("data", "token")
    def mint_access_token(self, *, ttl_seconds: int) -> AccessToken:
        """A token that may start agent calls for ``ttl_seconds``."""
        operation = "mint access token"
        answer = self._send(
            "POST",
            "/access-token",
            operation,
            json={"grants": {"agent": True}, "expires_in": ttl_seconds},
        )
        data = self._json(answer, operation)
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise UpstreamError(
                service=SERVICE,
                operation=operation,
                upstream_status=answer.status_code,
                body_excerpt="answer lacks token",
            )
        return AccessToken(token)
