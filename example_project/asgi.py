"""ASGI entry point, e.g. ``uvicorn example_project.asgi:application``.

With Django Channels installed (``pip install 'django-avaturn[engine]'``) it
also serves the site engine's socket (``AVATURN["ENGINE"] = "site"``);
without, it is Django's plain ASGI application.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# First: it sets Django up, which the engine's routing needs.
django_application = get_asgi_application()

try:
    from channels.routing import ProtocolTypeRouter, URLRouter
except ImportError:
    application = django_application
else:
    from django_avaturn.engine.routing import websocket_not_found, websocket_urlpatterns

    # No AuthMiddlewareStack: Avaturn's server connects with the socket's token and
    # secret, never a browser with cookies. websocket_not_found last: any other
    # path is refused at the handshake (403), not a 500 with an error logged.
    application = ProtocolTypeRouter(
        {
            "http": django_application,
            "websocket": URLRouter([*websocket_urlpatterns, websocket_not_found]),
        }
    )
