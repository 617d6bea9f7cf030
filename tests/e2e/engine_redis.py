"""The Redis channel layer and cache both processes of ``test_site_engine_servers`` use.

No Django imports: the server process's settings module imports this too.
"""

from __future__ import annotations

from typing import Any

# channels_redis's receive() blocks up to 5 s in Redis (BZPOPMIN): the client's read
# timeout must be longer. redis-py 8 defaults it to 5 s, which fails the process's
# read with a TimeoutError every 5 s (django_avaturn.W015).
LAYER_SOCKET_TIMEOUT = 10


def redis_layer(url: str, prefix: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": url, "socket_timeout": LAYER_SOCKET_TIMEOUT}],
                "prefix": prefix,
            },
        }
    }


def redis_cache(url: str, prefix: str) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
        }
    }
