"""Views that talk to the upstreams run outside ``ATOMIC_REQUESTS``, on every database.

Django's ``transaction.non_atomic_requests`` exempts a view from one
database's request transaction (``default`` unless told). A start, an end or
a termination talks to Avaturn and OpenAI for hundreds of milliseconds, and
a transaction held open across those calls would hold its locks (the
user's, the reservation's) as long; on the sessions' database, wherever a
site's router puts them, the reservation would become a savepoint whose
locks outlive it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from django.db import connections, transaction

View = TypeVar("View", bound=Callable[..., object])


def non_atomic_everywhere(view: View) -> View:
    """``view``, exempt from ``ATOMIC_REQUESTS`` on every configured database."""
    for alias in connections:
        view = transaction.non_atomic_requests(using=alias)(view)
    return view
