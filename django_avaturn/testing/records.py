"""Route names and the plain records the fake keeps and hands out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Route names: what a request was, independent of its exact path.
OPENAI_CLIENT_SECRET = "openai.client_secret"
AVATURN_CREATE = "avaturn.create"
AVATURN_TERMINATE = "avaturn.terminate"
AVATURN_TASK = "avaturn.task"
CARTESIA_ACCESS_TOKEN = "cartesia.access_token"
SDK_SESSION = "sdk.session"
SDK_PREFLIGHT = "sdk.preflight"
DAILY_ROOM = "fake.daily_room"
STANDIN_SDK = "fake.standin_sdk"
UNKNOWN = "unknown"

#: The routes that stand in for a real upstream: faults and latency apply to these.
UPSTREAM_ROUTES = frozenset(
    {
        OPENAI_CLIENT_SECRET,
        CARTESIA_ACCESS_TOKEN,
        AVATURN_CREATE,
        AVATURN_TERMINATE,
        AVATURN_TASK,
        SDK_SESSION,
    }
)

# Fault modes. "status" and "close" answer without doing the work; every other
# mode does the work and then spoils, delays or slows the answer.
MODE_STATUS = "status"
MODE_CLOSE = "close"
MODE_TIMEOUT = "timeout"
MODE_DELAY = "delay"
MODE_MALFORMED = "malformed"
MODE_MISSING_FIELDS = "missing_fields"
MODE_DRIP = "drip"
MODE_CREATE_THEN_STATUS = "create_then_status"

FAULT_MODES = frozenset(
    {
        MODE_STATUS,
        MODE_CLOSE,
        MODE_TIMEOUT,
        MODE_DELAY,
        MODE_MALFORMED,
        MODE_MISSING_FIELDS,
        MODE_DRIP,
        MODE_CREATE_THEN_STATUS,
    }
)

# Seconds, when fail() is given no delay: a "timeout" should outlast any sane
# client timeout (stop() wakes it early); "drip" is the pause between bytes.
DEFAULT_DELAYS: Mapping[str, float] = {MODE_TIMEOUT: 30.0, MODE_DELAY: 1.0, MODE_DRIP: 0.02}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, as it arrived."""

    route: str
    method: str
    path: str
    headers: Mapping[str, str]
    """Header names lower-cased."""
    body: bytes
    json: Any
    """The body parsed as JSON, or None when empty or not JSON."""
    at: float = 0.0
    """When it arrived, by the fake's clock."""


@dataclass(frozen=True)
class IssuedSecret:
    """An OpenAI client secret the fake handed out."""

    value: str
    expires_at: int
    session: Mapping[str, Any]
    created_at: int


@dataclass(frozen=True)
class IssuedToken:
    """A Cartesia access token the fake handed out."""

    value: str
    expires_at: int
    grants: Mapping[str, Any]
    created_at: int


@dataclass(frozen=True)
class FakeSession:
    """An Avaturn session the fake created."""

    session_id: str
    token: str
    client_secret: str
    """The engine's credential it was created with: the OpenAI client secret, the
    Cartesia access token, or "" (external, text-echo)."""
    body: Mapping[str, Any]
    created_at: float
    ended_at: float | None = None
    tasks: tuple[str, ...] = ()

    @property
    def live(self) -> bool:
        return self.ended_at is None

    @property
    def engine(self) -> str:
        engine = self.body.get("conversation_engine")
        return str(engine.get("type", "")) if isinstance(engine, Mapping) else ""

    @property
    def avatar_id(self) -> str | None:
        value = self.body.get("avatar_id")
        return value if isinstance(value, str) else None


@dataclass
class Fault:
    """A failure queued for one route; `remaining` None means until cleared."""

    route: str
    mode: str
    status: int
    body: bytes | None
    remaining: int | None
    delay: float


@dataclass
class Reply:
    """What the transport should send back, and how."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False
    """Close the connection without answering."""
    delay: float = 0.0
    """Seconds to wait before answering (or closing)."""
    drip: float | None = None
    """When set, send the body one byte at a time with this pause between bytes."""


@dataclass(frozen=True)
class Incoming:
    """A parsed request handed from the transport to the fake's logic."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
