"""The site engine socket's route, for the site's ASGI application.

```python
# asgi.py
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()  # first: it sets Django up

from django_avaturn.engine.routing import websocket_not_found, websocket_urlpatterns

application = ProtocolTypeRouter(
    {
        "http": django_asgi,
        # Your own WebSocket routes beside ours; websocket_not_found last.
        "websocket": URLRouter([*websocket_urlpatterns, websocket_not_found]),
    }
)
```

No ``AuthMiddlewareStack`` or origin check is needed for it: Avaturn's
server connects with the token and the secret, never a browser with cookies.
``websocket_not_found`` refuses a socket no route before it takes (an HTTP
403 at the handshake): without it Channels' ``URLRouter`` raises
``ValueError``, which ASGI servers answer with a 500 and an error logged
with its traceback, for anyone who asks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.urls import path, re_path

from django_avaturn.engine.consumer import SiteEngineConsumer

websocket_urlpatterns = [
    path("avaturn/engine/<str:token>/", SiteEngineConsumer.as_asgi(), name="avaturn-engine"),
]


async def refuse_socket(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Close the socket before accepting it: the server answers the handshake 403.

    A bare ASGI application, not a consumer: it joins no channel layer, so
    it needs no layer and fails with none.
    """
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.close"})


# Every path: last in a URLRouter, it takes what the routes before it did not.
websocket_not_found = re_path(
    r"",
    refuse_socket,  # type: ignore[arg-type]  # an ASGI application, as URLRouter routes take
    name="avaturn-websocket-not-found",
)
