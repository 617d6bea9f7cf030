"""The site engine socket's credentials: a token in the URL, a secret in a header.

A start of the site engine mints both (``mint``) and gives them to Avaturn in
the ``external`` engine object; Avaturn opens the socket with them. The token
is signed (``django.core.signing``, its own salt), names the session row and
expires ``SITE_ENGINE["CONNECT_WITHIN"]`` seconds after the start; it is used
once (``transitions.mark_engine_connected``). The secret travels in the
``X-Avaturn-Engine-Secret`` header; the row keeps only its SHA-256 (a random
256-bit secret needs no slow hash), compared in constant time.

Neither the token nor the secret is ever logged: a refusal says only why.

The start also leaves the socket what the conversation is made of, on the
row (``Session.engine_plan``, written with the secret's hash): the OpenAI
Realtime session its plan resolved and the tools, the hook's choice included.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from django.core import signing

from django_avaturn.conf import avaturn_settings

SALT = "django_avaturn.engine.socket"
SECRET_HEADER = "X-Avaturn-Engine-Secret"
# As ASGI gives header names: lower-cased bytes.
SECRET_HEADER_KEY = SECRET_HEADER.lower().encode("ascii")
# The URL path the engine socket is routed at, below PUBLIC_URL (routing.py).
SOCKET_PATH = "avaturn/engine/{token}/"


@dataclass(frozen=True)
class EngineCredentials:
    """What one start gives Avaturn: the token (in the URL) and the secret (in a header)."""

    token: str = field(repr=False)
    secret: str = field(repr=False)

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


class Refused(Exception):
    """The socket is refused before it is accepted; the message says why (never a credential)."""


def mint(row_pk: int) -> EngineCredentials:
    """A fresh token naming the row ``row_pk``, and a fresh secret."""
    token = signing.dumps({"s": row_pk}, salt=SALT, compress=False)
    return EngineCredentials(token=token, secret=secrets.token_urlsafe(32))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def socket_url(public_url: str, token: str) -> str:
    """The engine socket's URL below ``public_url`` (whose path prefix is kept)."""
    return public_url.rstrip("/") + "/" + SOCKET_PATH.format(token=token)


def session_pk(token: str, *, max_age: int | None = None) -> int:
    """The row a token names; ``Refused`` if its signature is wrong or it expired."""
    if max_age is None:
        max_age = int(avaturn_settings.SITE_ENGINE["CONNECT_WITHIN"])
    try:
        payload = signing.loads(token, salt=SALT, max_age=max_age)
    except signing.SignatureExpired:
        raise Refused("the token expired") from None
    except signing.BadSignature:
        raise Refused("the token's signature is wrong") from None
    pk = payload.get("s") if isinstance(payload, dict) else None
    if not isinstance(pk, int) or isinstance(pk, bool):
        raise Refused("the token names no session") from None
    return pk


def secret_matches(presented: str | None, stored_hash: str) -> bool:
    """Whether ``presented`` is the secret whose hash is ``stored_hash``, in constant time."""
    if not presented or not stored_hash:
        return False
    return hmac.compare_digest(hash_secret(presented), stored_hash)


def secret_from_headers(
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...],
) -> str | None:
    """The secret header's value from an ASGI scope's headers; None if absent or not ASCII."""
    for name, value in headers:
        if name.lower() == SECRET_HEADER_KEY:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def engine_plan(realtime_session: dict[str, Any], tools: list[str]) -> dict[str, Any]:
    """What a site engine row keeps for its socket (``Session.engine_plan``)."""
    return {"realtime_session": realtime_session, "tools": tools}
