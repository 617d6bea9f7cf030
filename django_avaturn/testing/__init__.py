"""A loopback fake of OpenAI's client-secret endpoint, Cartesia's access-token
endpoint, Avaturn Live's REST API (sessions and tasks) and the Avaturn browser
SDK's session endpoint, for tests and local demos.

Pure standard library: usable in any test suite, with or without Django::

    from django_avaturn.testing import FakeUpstream

    with FakeUpstream() as fake:
        ...  # point AVATURN settings at fake.settings()

Never expose it beyond loopback: its ``/_fake/`` control API is unauthenticated.

For the site engine (these need ``websockets``, which ``django-avaturn[engine]``
brings): `FakeRealtime`, a scripted OpenAI Realtime WebSocket server, and
`AvaturnEngineClient`, Avaturn's side of an external engine's socket. They are
imported on first use, so the rest works with the standard library alone.
"""

from typing import TYPE_CHECKING, Any

from .fake import (
    DEFAULT_AVATURN_API_KEY,
    DEFAULT_CARTESIA_API_KEY,
    DEFAULT_OPENAI_API_KEY,
    STANDIN_SDK_PATH,
    FakeUpstream,
    is_loopback_host,
)
from .records import (
    AVATURN_CREATE,
    AVATURN_TASK,
    AVATURN_TERMINATE,
    CARTESIA_ACCESS_TOKEN,
    DAILY_ROOM,
    FAULT_MODES,
    OPENAI_CLIENT_SECRET,
    SDK_PREFLIGHT,
    SDK_SESSION,
    UNKNOWN,
    UPSTREAM_ROUTES,
    FakeSession,
    IssuedSecret,
    IssuedToken,
    RecordedRequest,
)

if TYPE_CHECKING:
    from .engine_client import AvaturnEngineClient, Segment
    from .realtime import (
        AdvisoryError,
        BargeIn,
        CallTool,
        Close,
        FakeRealtime,
        RealtimeConnection,
        Script,
        Speak,
        rundemo_script,
    )

_LAZY = {
    "AvaturnEngineClient": "engine_client",
    "Segment": "engine_client",
    "AdvisoryError": "realtime",
    "BargeIn": "realtime",
    "CallTool": "realtime",
    "Close": "realtime",
    "FakeRealtime": "realtime",
    "RealtimeConnection": "realtime",
    "Script": "realtime",
    "Speak": "realtime",
    "rundemo_script": "realtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AVATURN_CREATE",
    "AVATURN_TASK",
    "AVATURN_TERMINATE",
    "CARTESIA_ACCESS_TOKEN",
    "DAILY_ROOM",
    "DEFAULT_AVATURN_API_KEY",
    "DEFAULT_CARTESIA_API_KEY",
    "DEFAULT_OPENAI_API_KEY",
    "FAULT_MODES",
    "OPENAI_CLIENT_SECRET",
    "SDK_PREFLIGHT",
    "SDK_SESSION",
    "STANDIN_SDK_PATH",
    "UNKNOWN",
    "UPSTREAM_ROUTES",
    "AdvisoryError",
    "AvaturnEngineClient",
    "BargeIn",
    "CallTool",
    "Close",
    "FakeRealtime",
    "FakeSession",
    "FakeUpstream",
    "IssuedSecret",
    "IssuedToken",
    "RealtimeConnection",
    "RecordedRequest",
    "Script",
    "Segment",
    "Speak",
    "is_loopback_host",
    "rundemo_script",
]
