"""Throttling session starts, which are the calls that spend money, and transcript lines."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

from django_avaturn.exceptions import StorageUnavailable
from django_avaturn.validation import rate_setting

logger = logging.getLogger(__name__)


class SessionStartThrottle(UserRateThrottle):
    """Per-user rate limit on starts, from ``AVATURN["START_THROTTLE_RATE"]``.

    Counts live in Django's default cache: with several processes, configure a
    shared cache (e.g. ``django.core.cache.backends.redis.RedisCache``) or each
    process counts on its own. When that cache cannot be reached, starts are
    refused (``503 unavailable``) rather than let through uncounted.
    """

    scope = "avaturn_start"

    def get_rate(self) -> str | None:
        # Validated: DRF would read "10/month" as ten a minute, and fail on
        # "10/fortnight" with a KeyError (a 500).
        return rate_setting("START_THROTTLE_RATE")

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            # Each cache backend fails in its own exception types (redis's
            # ConnectionError, a database cache's DatabaseError): an HTML 500
            # otherwise.
            logger.exception("The start throttle could not reach its cache")
            raise StorageUnavailable() from exc


class TranscriptThrottle(UserRateThrottle):
    """Per-user rate limit on transcript lines, from ``AVATURN["TRANSCRIPT_THROTTLE_RATE"]``.

    Across all the user's sessions; the per-session caps (``transcripts``) are
    the hard bound, this keeps one client from writing them full in seconds.
    Counts in Django's default cache like the start throttle, and refuses
    (``503 unavailable``) when that cache cannot be reached.
    """

    scope = "avaturn_transcript"

    def get_rate(self) -> str | None:
        return rate_setting("TRANSCRIPT_THROTTLE_RATE")

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            logger.exception("The transcript throttle could not reach its cache")
            raise StorageUnavailable() from exc
