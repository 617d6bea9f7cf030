"""An example ``SESSION_CONFIG_HOOK``: per-request session config."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def greet_by_name(request: HttpRequest | None, config: str | None) -> dict[str, Any]:
    """Greet the signed-in visitor by name; a widget may ask for the "brief" persona."""
    user = getattr(request, "user", None)
    # get_short_name() is optional on a custom user model (AbstractBaseUser has none).
    short_name = getattr(user, "get_short_name", None)
    name = (short_name() if short_name else "") or (user.get_username() if user else "there")
    instructions = (
        f"You are the friendly guide of this example site. Greet the visitor as {name}. "
        "Keep answers short."
    )
    if config == "brief":
        instructions += " Answer in one sentence."
    return {"instructions": instructions}
