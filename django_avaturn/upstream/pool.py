"""Run blocking upstream calls a bounded number at a time.

Bulk terminations (the admin action, the kill switch, the expiry command)
make one Avaturn DELETE per session. One after another, a thousand slow
answers take many minutes; all at once, they would open a thousand
connections. A small thread pool, sized by
``AVATURN["TERMINATE_CONCURRENCY"]``, sits in between. A start ending the
sessions it replaces (at most its user's former cap) sends them all at once.

The functions run here make HTTP calls only: the callers do their database
work before and after, on their own thread, so no worker opens (or leaks) a
database connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from django_avaturn.conf import avaturn_settings

T = TypeVar("T")
R = TypeVar("R")


def terminate_concurrency() -> int:
    """The configured number of upstream calls allowed in flight at once."""
    return avaturn_settings.TERMINATE_CONCURRENCY


def run_bounded(
    func: Callable[[T], R], items: Sequence[T], *, max_workers: int | None = None
) -> list[R | Exception]:
    """Call ``func`` on every item, at most ``max_workers`` at a time.

    Returns one result per item, in the items' order; an item whose call
    raised gets the exception instead, so one failure never hides the others.
    """
    workers = min(max_workers or terminate_concurrency(), len(items))
    if workers <= 1:
        return [_call(func, item) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avaturn") as pool:
        return list(pool.map(lambda item: _call(func, item), items))


def _call(func: Callable[[T], R], item: T) -> R | Exception:
    try:
        return func(item)
    except Exception as exc:
        return exc
