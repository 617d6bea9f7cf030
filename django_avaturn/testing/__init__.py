"""A loopback fake of OpenAI's client-secret endpoint, Cartesia's access-token
endpoint, Avaturn Live's REST API (sessions and tasks) and the Avaturn browser
SDK's session endpoint, for tests and local demos.

Pure standard library: usable in any test suite, with or without Django::

    from django_avaturn.testing import FakeUpstream

    with FakeUpstream() as fake:
        ...  # point AVATURN settings at fake.settings()

Never expose it beyond loopback: its ``/_fake/`` control API is unauthenticated.
"""

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
    "FakeSession",
    "FakeUpstream",
    "IssuedSecret",
    "IssuedToken",
    "RecordedRequest",
    "is_loopback_host",
]
