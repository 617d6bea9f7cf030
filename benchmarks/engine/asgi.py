"""The ASGI app the engine benchmark serves under uvicorn: the site engine's socket route."""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.engine.settings")

from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()

from django_avaturn.engine.routing import (  # noqa: E402
    websocket_not_found,
    websocket_urlpatterns,
)

# As the docs route it: any other path refused at the handshake.
application = ProtocolTypeRouter(
    {"http": django_asgi, "websocket": URLRouter([*websocket_urlpatterns, websocket_not_found])}
)
