"""Keep secrets out of anything a person or a log might read.

Upstream error bodies can echo what was sent to them (a key, a client
secret, a token), so every excerpt we keep goes through ``scrub()`` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from django_avaturn.conf import avaturn_settings

REDACTED = "[redacted]"

# Shapes of credentials the two vendors hand out, so that even a key we do
# not know about (an old one, another project's) is not repeated verbatim.
_CREDENTIAL_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bek_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bsk_car_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-\.=:+/]{8,}"),
)

EXCERPT_LENGTH = 300


def _configured_secrets() -> Iterable[object]:
    """The site's own keys and engine secrets as configured (however malformed).

    None without Django settings (the fake's command line logs through the
    package's loggers too): the credential shapes are still scrubbed.
    """
    try:
        # Read first here, settings are set up from DJANGO_SETTINGS_MODULE if it is set.
        getattr(settings, "AVATURN", None)
    except ImproperlyConfigured:
        return
    for name in ("API_KEY", "OPENAI_API_KEY"):
        # The site's own keys, also under TEST_MODE (whose fake has public test keys).
        yield avaturn_settings.configured(name)
    cartesia = avaturn_settings.configured("CARTESIA")
    cartesia_key = cartesia.get("API_KEY") if isinstance(cartesia, Mapping) else None
    yield cartesia_key or os.environ.get("CARTESIA_API_KEY")
    external = avaturn_settings.configured("EXTERNAL_ENGINE")
    headers = external.get("HEADERS") if isinstance(external, Mapping) else None
    if isinstance(headers, Mapping):
        yield from headers.values()


def _known_secrets() -> Iterable[str]:
    for value in _configured_secrets():
        if not isinstance(value, str):
            continue
        # As configured, and as sent: the clients strip the newline a key read
        # from a file ends in, so an upstream echo carries the stripped form.
        for form in {value, value.strip()}:
            # Very short values would redact half of every message; a real key is long.
            if len(form) >= 6:
                yield form


def scrub(text: str, *, extra_secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with every known key and credential-shaped string removed."""
    for secret in (*_known_secrets(), *extra_secrets):
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern in _CREDENTIAL_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


def printable(text: str) -> str:
    """``text`` with every character that is not printable (a newline, a NUL, a
    terminal escape) written as its Python escape: what a peer sent cannot start
    a log line of its own or reach a terminal as a control sequence."""
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def excerpt(
    body: bytes | str | None, *, limit: int = EXCERPT_LENGTH, extra_secrets: Iterable[str] = ()
) -> str:
    """A short, single-line, scrubbed excerpt of what an upstream said (a body, an error)."""
    if body is None:
        return ""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    # Scrub before truncating so a key cut in half cannot survive as a prefix.
    text = printable(scrub(" ".join(text.split()), extra_secrets=extra_secrets))
    return text if len(text) <= limit else text[: limit - 1] + "…"
