"""The ASGI application ``test_site_engine_servers`` serves with uvicorn and daphne:
Django for HTTP, the site engine's socket routed as docs/site-engine.md shows."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.engine_settings")
django_application = get_asgi_application()  # first: it sets Django up

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from django_avaturn.engine.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {"http": django_application, "websocket": URLRouter(websocket_urlpatterns)}
)
