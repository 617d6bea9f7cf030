"""Throttling session starts, which are the calls that spend money."""

from __future__ import annotations

from rest_framework.throttling import UserRateThrottle

from django_avaturn.conf import avaturn_settings


class SessionStartThrottle(UserRateThrottle):
    """Per-user rate limit on starts, from ``AVATURN["START_THROTTLE_RATE"]``.

    Counts live in Django's default cache: with several processes, configure a
    shared cache (e.g. ``django.core.cache.backends.redis.RedisCache``) or each
    process counts on its own.
    """

    scope = "avaturn_start"

    def get_rate(self) -> str | None:
        rate = avaturn_settings.START_THROTTLE_RATE
        return str(rate) if rate else None
