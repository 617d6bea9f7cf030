"""The test settings with a shared Redis cache, for the cross-process throttle test."""

from __future__ import annotations

import os

from tests.settings import *  # noqa: F403
from tests.settings import AVATURN

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("AVATURN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
        "KEY_PREFIX": os.environ.get("AVATURN_TEST_REDIS_PREFIX", "django-avaturn-tests"),
    }
}
AVATURN = {
    **AVATURN,
    "START_THROTTLE_RATE": os.environ.get("AVATURN_TEST_THROTTLE_RATE", "2/minute"),
}
