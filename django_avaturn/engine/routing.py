"""The site engine socket's route, for the site's ASGI application.

```python
# asgi.py
from channels.routing import ProtocolTypeRouter, URLRouter
from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()  # first: it sets Django up

from django_avaturn.engine.routing import websocket_urlpatterns

application = ProtocolTypeRouter(
    {"http": django_asgi, "websocket": URLRouter(websocket_urlpatterns)}
)
```

No ``AuthMiddlewareStack`` or origin check is needed for it: Avaturn's
server connects with the token and the secret, never a browser with cookies.
"""

from __future__ import annotations

from django.urls import path

from django_avaturn.engine.consumer import SiteEngineConsumer

websocket_urlpatterns = [
    path("avaturn/engine/<str:token>/", SiteEngineConsumer.as_asgi(), name="avaturn-engine"),
]
