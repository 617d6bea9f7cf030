"""The ASGI application ``test_site_engine_servers`` serves with uvicorn and daphne:
Django for HTTP, the site engine's socket routed as docs/site-engine.md shows."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
from types import FrameType
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.e2e.engine_settings")
django_application = get_asgi_application()  # first: it sets Django up

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from django_avaturn.engine.routing import (  # noqa: E402
    websocket_not_found,
    websocket_urlpatterns,
)

application = ProtocolTypeRouter(
    {
        "http": django_application,
        "websocket": URLRouter([*websocket_urlpatterns, websocket_not_found]),
    }
)


def _dump_stacks(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1 (the test's server did not stop in time): every thread's stack, then
    what each task awaits, innermost last, to stderr, which the test shows."""
    faulthandler.dump_traceback(all_threads=True)
    lines = []
    loop = asyncio._get_running_loop()
    for task in asyncio.all_tasks(loop) if loop is not None else ():
        lines.append(f"{task!r} awaits:")
        awaited: Any = task.get_coro()
        while awaited is not None:
            suspended = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if suspended is None:
                lines.append(f"  {awaited!r}")
            else:
                code = suspended.f_code
                lines.append(f"  {code.co_filename}:{suspended.f_lineno} in {code.co_name}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    sys.stderr.write("".join(f"{line}\n" for line in lines))
    sys.stderr.flush()


signal.signal(signal.SIGUSR1, _dump_stacks)
