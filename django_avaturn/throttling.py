"""Throttling session starts, which are the calls that spend money."""

from __future__ import annotations

from rest_framework.throttling import UserRateThrottle

from django_avaturn.validation import rate_setting


class SessionStartThrottle(UserRateThrottle):
    """Per-user rate limit on starts, from ``AVATURN["START_THROTTLE_RATE"]``.

    Counts live in Django's default cache: with several processes, configure a
    shared cache (e.g. ``django.core.cache.backends.redis.RedisCache``) or each
    process counts on its own.
    """

    scope = "avaturn_start"

    def get_rate(self) -> str | None:
        # Validated: DRF would read "10/month" as ten a minute, and fail on
        # "10/fortnight" with a KeyError (a 500).
        return rate_setting("START_THROTTLE_RATE")
