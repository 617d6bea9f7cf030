"""The benchmark's settings with the site engine on (``benchmarks.engine.settings``).

The engine opens OpenAI Realtime at the benchmark's peer
(``BENCH_ENGINE_PEER_URL``), its socket's public URL is the server's own
loopback address (``BENCH_ENGINE_PUBLIC_URL``), and its one tool is the
benchmark's trivial async ``bench_echo``. The hand-over from the rows'
creator to the server goes through a file cache both processes share; the
channel layer is the in-memory one (one server process). Transcripts are off:
the measured path is the bridge's, not the transcript writer's.
"""

from __future__ import annotations

import os

from benchmarks.procs import WORK
from benchmarks.settings import *  # noqa: F403
from benchmarks.settings import AVATURN, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "channels"]
ASGI_APPLICATION = "benchmarks.engine.asgi.application"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(WORK / "engine-cache"),
    }
}
AVATURN = {
    **AVATURN,
    "ENGINE": "site",
    "TRANSCRIPTS_ENABLED": False,
    # Never reached during a measurement; an end's terminate fails fast here.
    "API_URL": os.environ.get("BENCH_ENGINE_AVATURN_URL", "http://127.0.0.1:9"),
    "OPENAI_API_KEY": "sk-bench-not-a-key",
    "SITE_ENGINE": {
        "PUBLIC_URL": os.environ.get("BENCH_ENGINE_PUBLIC_URL", "ws://127.0.0.1:8000"),
        "TOOLS": ["benchmarks.engine.tools"],
        "OPENAI_WEBSOCKET_URL": os.environ.get("BENCH_ENGINE_PEER_URL", "ws://127.0.0.1:9/v1"),
        "CONNECT_WITHIN": 600,
    },
}
