"""Settings of the ASGI server process that ``test_site_engine_servers`` runs.

The test settings, with what the test process passes through the environment:
its test database (``AVATURN_E2E_DATABASE``, JSON: the same rows on both
sides), the ``AVATURN`` entries that point at its loopback fakes
(``AVATURN_E2E_AVATURN``, JSON), and a Redis channel layer and cache under the
test's own prefix (``AVATURN_E2E_REDIS_URL``, ``AVATURN_E2E_REDIS_PREFIX``), so
the site's messages cross from the test process to this one.
"""

from __future__ import annotations

import json
import os

from tests.e2e.engine_redis import redis_cache, redis_layer
from tests.settings import *  # noqa: F403
from tests.settings import AVATURN

# PUBLIC_URL is ws:// on loopback: allowed with DEBUG on only.
DEBUG = True
ASGI_APPLICATION = "tests.e2e.engine_asgi.application"

DATABASES = {"default": json.loads(os.environ["AVATURN_E2E_DATABASE"])}

_redis_url = os.environ["AVATURN_E2E_REDIS_URL"]
_prefix = os.environ["AVATURN_E2E_REDIS_PREFIX"]
CHANNEL_LAYERS = redis_layer(_redis_url, _prefix)
CACHES = redis_cache(_redis_url, _prefix)

AVATURN = {**AVATURN, **json.loads(os.environ["AVATURN_E2E_AVATURN"])}
AVATURN.pop("OPENAI_HTTP_CLIENT", None)  # the real SDK, over real sockets

# The app's own log lines, to stderr: the test reads them (a refusal says why, never
# the token or the secret).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django_avaturn": {"handlers": ["stderr"], "level": "INFO"}},
}
