"""The ASGI app the engine benchmark serves under uvicorn: the site engine's socket route."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.engine.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()

from django_avaturn.engine.routing import websocket_urlpatterns  # noqa: E402

if os.environ.get("BENCH_ENGINE_DIRECT_DISPATCH"):
    # The experiment ``engine-direct`` (never the measured engine): Avaturn's frames reach
    # ``receive`` without Channels' per-message ``aclose_old_connections()``, a hop through
    # the one thread that every ``database_sync_to_async`` call of the process shares.
    from typing import Any

    from django_avaturn.engine.consumer import SiteEngineConsumer

    _dispatch = SiteEngineConsumer.dispatch

    async def _direct_dispatch(self: SiteEngineConsumer, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await _dispatch(self, message)

    SiteEngineConsumer.dispatch = _direct_dispatch  # type: ignore[method-assign]

application = ProtocolTypeRouter(
    {"http": django_asgi, "websocket": URLRouter(websocket_urlpatterns)}
)
