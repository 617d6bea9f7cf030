"""Throttling session starts, which are the calls that spend money, and transcript lines.

At most N starts (or lines) per user in any window of the rate's duration D, however
many processes and threads start at once. (DRF's ``UserRateThrottle`` reads
a history list from the cache, checks it, then writes it back: concurrent
starts read the same history and all pass.) Here each user has N slots,
cache keys taken with an atomic add-if-absent that expire after D: a slot
taken at t cannot be taken again before t + D, so any window of length D
admits at most N starts, and a burst of N all get through. Exact on Redis,
memcached, the local-memory cache and the database cache (``_DatabaseSlots``);
not on the file-based cache, whose ``add`` is a read then a write, and the
dummy cache throttles nothing. A cache that evicts keys (``MAX_ENTRIES``, an
LRU) can forget a slot.
"""

from __future__ import annotations

import base64
import math
import pickle
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.db import DatabaseCache
from django.db import IntegrityError, connections, models, router, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import StorageUnavailable
from django_avaturn.logs import get_logger

logger = get_logger(__name__)

_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Some caches keep time in whole seconds and drop a key up to a second early
# (the database cache rounds expiry times down; memcached counts in seconds):
# a slot is kept one second longer than the rate's duration, so never less.
_EXPIRY_SLACK = 1


def parse_rate(rate: str) -> tuple[int, int]:
    """``"10/minute"`` as ``(10, 60)``: starts allowed, and per how many seconds."""
    count, period = rate.split("/")
    return int(count), _SECONDS[period[0]]


class SlotRateThrottle(BaseThrottle):
    """A per-user rate from the setting named ``rate_setting``, counted in slots (see above).

    Counts live in Django's default cache: with several processes, configure a
    shared cache (e.g. ``django.core.cache.backends.redis.RedisCache``) or each
    process counts on its own. When that cache cannot be reached, requests are
    refused (``503 unavailable``) rather than let through uncounted.
    """

    scope: str
    rate_setting: str
    cache_format = "throttle_%(scope)s_%(ident)s"

    def __init__(self) -> None:
        # Validated: DRF would read "10/month" as ten a minute, and fail on
        # "10/fortnight" with a KeyError (a 500).
        self.rate: str | None = getattr(avaturn_settings, self.rate_setting)
        self._free_at: float | None = None

    def get_cache_key(self, request: Request, view: Any) -> str:
        user = request.user
        ident = user.pk if user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        count, duration = parse_rate(self.rate)
        key = self.get_cache_key(request, view)
        try:
            return self._take_slot(caches["default"], key, count, duration)
        except Exception as exc:
            # Each cache backend fails in its own exception types (redis's
            # ConnectionError, a database cache's DatabaseError): an HTML 500
            # otherwise.
            logger.exception("The %s throttle could not reach its cache", self.scope)
            raise StorageUnavailable() from exc

    def _take_slot(self, cache: BaseCache, key: str, count: int, duration: int) -> bool:
        """Take a free slot of the ``count`` under ``key``; False (and when one frees) if none."""
        store = _DatabaseSlots(cache) if isinstance(cache, DatabaseCache) else _CacheSlots(cache)
        slots = [f"{key}_{index}" for index in range(count)]
        taken = store.read(slots)
        free_at = time.time() + duration + _EXPIRY_SLACK
        for slot in slots:
            if slot not in taken and store.take(slot, free_at):
                return True
        # Every slot is taken. One taken since the read frees last of all.
        self._free_at = min(taken.values(), default=free_at)
        return False

    def wait(self) -> float | None:
        """Seconds until a slot frees (for ``Retry-After``), after a refusal."""
        if self._free_at is None:
            return None
        return float(max(1, math.ceil(self._free_at - time.time())))


class SessionStartThrottle(SlotRateThrottle):
    """Per-user rate limit on starts, from ``AVATURN["START_THROTTLE_RATE"]``."""

    scope = "avaturn_start"
    rate_setting = "START_THROTTLE_RATE"


class TranscriptThrottle(SlotRateThrottle):
    """Per-user rate limit on transcript lines, from ``AVATURN["TRANSCRIPT_THROTTLE_RATE"]``.

    Across all the user's sessions; the per-session caps are the hard bound,
    this keeps one client from writing them full in seconds.
    """

    scope = "avaturn_transcript"
    rate_setting = "TRANSCRIPT_THROTTLE_RATE"


class EngineMessageThrottle(SlotRateThrottle):
    """Per-user rate limit on the page's messages to its site engine conversation,
    from ``AVATURN["MESSAGE_THROTTLE_RATE"]``."""

    scope = "avaturn_message"
    rate_setting = "MESSAGE_THROTTLE_RATE"


class _CacheSlots:
    """Slots as plain cache keys: ``add`` is atomic on Redis (``SET NX``), memcached
    and the local-memory cache (under its lock), and an expired key counts as absent."""

    def __init__(self, cache: BaseCache) -> None:
        self.cache = cache

    def read(self, slots: list[str]) -> dict[str, float]:
        """The slots taken, each with the time it frees."""
        found = self.cache.get_many(slots)
        return {slot: value for slot, value in found.items() if isinstance(value, (int, float))}

    def take(self, slot: str, free_at: float) -> bool:
        return self.cache.add(slot, free_at, math.ceil(free_at - time.time()))


class _DatabaseSlots:
    """Slots as rows of the database cache's table, read and taken by statements of ours.

    Django's database cache is not atomic for a key whose row has expired
    (its rows stay until culled): ``add`` reads the row, then updates it, so
    two adds that both read it expired both update it (and both succeed on
    PostgreSQL); and ``get`` deletes the expired rows it read, perhaps after
    another request took one afresh. Here a read deletes nothing, and an
    expired row is taken by one conditional ``UPDATE``, a missing one by an
    ``INSERT`` that the table's primary key lets only one request make. The
    rows are written as Django writes them, so the cache reads them too.
    """

    def __init__(self, cache: DatabaseCache) -> None:
        self.cache = cache
        self.using = router.db_for_write(cache.cache_model_class)
        self.connection = connections[self.using]
        quote = self.connection.ops.quote_name
        self.table = quote(cache._table)  # type: ignore[attr-defined]  # the LOCATION
        self.key, self.value, self.expires = quote("cache_key"), quote("value"), quote("expires")

    def read(self, slots: list[str]) -> dict[str, float]:
        keys = {self.cache.make_and_validate_key(slot): slot for slot in slots}
        expression = models.Expression(output_field=models.DateTimeField())
        converters = [
            *self.connection.ops.get_db_converters(expression),
            *expression.get_db_converters(self.connection),
        ]
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {self.key}, {self.expires} FROM {self.table} "  # noqa: S608 (names quoted)
                f"WHERE {self.key} IN ({', '.join(['%s'] * len(keys))}) AND {self.expires} >= %s",
                [*keys, self._adapt(timezone.now())],
            )
            rows = cursor.fetchall()
        taken = {}
        for key, expires in rows:
            for converter in converters:
                expires = converter(expires, expression, self.connection)
            taken[keys[key]] = expires.timestamp()
        return taken

    def take(self, slot: str, free_at: float) -> bool:
        key = self.cache.make_and_validate_key(slot)
        value = base64.b64encode(pickle.dumps(free_at, self.cache.pickle_protocol)).decode("latin1")
        zone = dt_timezone.utc if settings.USE_TZ else None
        expires = self._adapt(datetime.fromtimestamp(free_at, tz=zone))
        with transaction.atomic(using=self.using), self.connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {self.table} SET {self.value} = %s, {self.expires} = %s "  # noqa: S608
                f"WHERE {self.key} = %s AND {self.expires} < %s",
                [value, expires, key, self._adapt(timezone.now())],
            )
            if cursor.rowcount == 1:
                return True
            try:
                with transaction.atomic(using=self.using):
                    cursor.execute(
                        f"INSERT INTO {self.table} ({self.key}, {self.value}, {self.expires}) "  # noqa: S608
                        "VALUES (%s, %s, %s)",
                        [key, value, expires],
                    )
            except IntegrityError:
                return False  # taken meanwhile
        return True

    def _adapt(self, moment: datetime) -> Any:
        return self.connection.ops.adapt_datetimefield_value(moment)
