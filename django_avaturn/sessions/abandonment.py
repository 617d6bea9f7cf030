"""Remembering, briefly, the starts a visitor's page abandoned before their row existed.

The widget names each start with a client reference (``client_ref``). When
its page goes away mid-start it asks to abandon that reference
(``services.abandon_start``); a start whose row exists is ended through the
row. But the abandon can overtake the start it names (separate connections,
a queue in front of the workers), and find no row yet: then only this memory,
in Django's default cache, tells the start when its reservation is made.

Each side writes its own record before it reads the other's: the abandon
remembers the reference, then looks for the row; the start commits its row,
then asks whether the reference was abandoned. Whichever comes second sees
the first. With several processes the cache must be shared (as for the start
throttle), or an abandon handled by one process is unknown to another; the
row's path, and the expiry command after it, still hold.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.core.cache import cache

from django_avaturn.logs import get_logger

logger = get_logger(__name__)

# Long enough for a start queued behind busy workers to reach its reservation;
# after that the row exists, and the abandon found it (or the expiry command will).
REMEMBER_FOR = 600


def _key(user_pk: Any, client_ref: str) -> str:
    # Hashed: a custom user model's key may hold characters a cache key must not.
    digest = hashlib.sha256(f"{user_pk}\x00{client_ref}".encode()).hexdigest()
    return f"django_avaturn:abandoned:{digest}"


def remember(user_pk: Any, client_ref: str) -> None:
    """Record that ``user_pk`` abandoned the start named ``client_ref``. Never raises."""
    try:
        cache.set(_key(user_pk, client_ref), True, timeout=REMEMBER_FOR)
    except Exception:
        # Each cache backend fails in its own exception types; the row's path still holds.
        logger.exception("Could not remember an abandoned start; an overtaken start runs on")


def was_abandoned(user_pk: Any, client_ref: str) -> bool:
    """Whether ``user_pk`` abandoned the start named ``client_ref``. Never raises."""
    try:
        return bool(cache.get(_key(user_pk, client_ref), False))
    except Exception:
        logger.exception("Could not read the abandoned starts; this start goes ahead")
        return False
