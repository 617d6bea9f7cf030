"""`FakeUpstream`: OpenAI client secrets, Cartesia access tokens, Avaturn Live's
REST API and the browser SDK's session endpoint, served over real HTTP on loopback.

For tests, benchmarks and local demos only. It accepts anything that carries
its own fake keys and has a control API under ``/_fake/`` that anyone who can
reach it may use: never expose it beyond loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, replace
from importlib.resources import files
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from django_avaturn.logs import get_logger

from . import answers
from .records import (
    AVATURN_CREATE,
    AVATURN_TASK,
    AVATURN_TERMINATE,
    CARTESIA_ACCESS_TOKEN,
    DAILY_ROOM,
    DEFAULT_DELAYS,
    FAULT_MODES,
    MODE_CLOSE,
    MODE_CREATE_THEN_STATUS,
    MODE_DRIP,
    MODE_MALFORMED,
    MODE_MISSING_FIELDS,
    MODE_STATUS,
    OPENAI_CLIENT_SECRET,
    SDK_PREFLIGHT,
    SDK_SESSION,
    STANDIN_SDK,
    UNKNOWN,
    UPSTREAM_ROUTES,
    FakeSession,
    Fault,
    Incoming,
    IssuedSecret,
    IssuedToken,
    RecordedRequest,
    Reply,
)
from .server import FakeHTTPServer

logger = get_logger(__name__)

if TYPE_CHECKING:
    from .engine_client import AvaturnEngineClient

DEFAULT_OPENAI_API_KEY = "sk-fake-openai-key"
DEFAULT_AVATURN_API_KEY = "av-fake-avaturn-key"
DEFAULT_CARTESIA_API_KEY = "sk_car_fake-cartesia-key"
# The Cartesia-Version the fake requires a request to name (the one Avaturn's guide uses).
CARTESIA_VERSIONS = frozenset({"2025-04-16"})
RECENT_REQUESTS_IN_STATE = 100

_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"/v1/realtime/client_secrets/?"), OPENAI_CLIENT_SECRET),
    ("POST", re.compile(r"/access-token/?"), CARTESIA_ACCESS_TOKEN),
    ("POST", re.compile(r"/api/v1/sessions/?"), AVATURN_CREATE),
    ("DELETE", re.compile(r"/api/v1/sessions/(?P<session_id>[^/]+)/?"), AVATURN_TERMINATE),
    ("POST", re.compile(r"/api/v1/sessions/(?P<session_id>[^/]+)/tasks/?"), AVATURN_TASK),
    ("GET", re.compile(r"/_sdk/v0/sessions/?"), SDK_SESSION),
    ("OPTIONS", re.compile(r"/_sdk/v0/sessions/?"), SDK_PREFLIGHT),
)
_CONTROL_PREFIX = "/_fake/"
STANDIN_SDK_PATH = "/_fake/sdk/main.js"
# Under the control prefix, but for the browser: no control actions.
_BROWSER_PATHS = (
    (re.compile(r"/_fake/daily-room(?:/.*)?"), DAILY_ROOM),
    (re.compile(re.escape(STANDIN_SDK_PATH)), STANDIN_SDK),
)
_BROWSER_ROUTES = frozenset({SDK_SESSION, SDK_PREFLIGHT, DAILY_ROOM, STANDIN_SDK})
# The stand-in SDK polls here for the engine's messages to the page (see
# send_browser_message); polled, so never recorded as a request.
_SDK_MESSAGES_PATH = re.compile(r"/_sdk/v0/sessions/messages/?")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_route(route: str) -> None:
    if route not in UPSTREAM_ROUTES:
        raise ValueError(f"unknown route {route!r}; expected one of {sorted(UPSTREAM_ROUTES)}")


def _check_seconds(seconds: float, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0")
    return float(seconds)


class FakeUpstream:
    """Every upstream on ``http://127.0.0.1:<port>``, with recording and fault injection.

    Use it as a context manager, or call `start()` and `stop()`::

        with FakeUpstream() as fake:
            settings.AVATURN = {**settings.AVATURN, **fake.settings()}
            ...
            assert fake.live_session_ids() == set()
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        openai_api_key: str = DEFAULT_OPENAI_API_KEY,
        avaturn_api_key: str = DEFAULT_AVATURN_API_KEY,
        cartesia_api_key: str = DEFAULT_CARTESIA_API_KEY,
        latency: Mapping[str, float] | None = None,
        gone_avatars: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
        allow_non_loopback: bool = False,
        connect_engines: bool | None = None,
        engine_client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not allow_non_loopback and not is_loopback_host(host):
            raise ValueError(
                f"refusing to serve the fake upstream on non-loopback host {host!r}: "
                "its control API lets anyone who reaches it change its state"
            )
        self.host = host
        self.port = port
        self.openai_api_key = openai_api_key
        self.avaturn_api_key = avaturn_api_key
        self.cartesia_api_key = cartesia_api_key
        self.clock = clock
        #: Connect an `AvaturnEngineClient` to an external engine's URL, as Avaturn
        #: does once the session exists: None for loopback URLs only, True for any.
        self.connect_engines = connect_engines
        #: Keyword arguments for each `AvaturnEngineClient` (``microphone``, ``playback_rate``...).
        self.engine_client_options: dict[str, Any] = dict(engine_client_options or {})
        #: Avatar ids that answer 410 Gone on create. Safe to edit while serving.
        self.gone_avatars: set[str] = set(gone_avatars)
        self._initial_gone = frozenset(self.gone_avatars)
        self._initial_latency: dict[str, float] = {}
        for route, seconds in (latency or {}).items():
            _check_route(route)
            self._initial_latency[route] = _check_seconds(seconds, "latency")
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: FakeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._init_state()

    def _init_state(self) -> None:
        self._requests: list[RecordedRequest] = []
        self._counts: Counter[str] = Counter()
        self._sessions: dict[str, FakeSession] = {}
        self._live_by_token: dict[str, str] = {}
        self._secrets: dict[str, IssuedSecret] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._browser_messages: dict[str, list[dict[str, Any]]] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._latency = dict(self._initial_latency)
        self._connections = 0
        self._closed = 0
        self._engine_clients: dict[str, AvaturnEngineClient] = {}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeUpstream:
        if self._server is not None:
            raise RuntimeError("the fake upstream is already running")
        self._stopping.clear()
        server = FakeHTTPServer(
            (self.host, self.port),
            self.dispatch,
            on_connection=self._connection_opened,
            on_close=self._connection_closed,
            sleep=self._sleep,
        )
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeUpstream:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._close_engine_clients()
        self._stopping.set()  # wakes handlers sleeping on a delay or drip
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> FakeUpstream:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<FakeUpstream {where}>"

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when woken by stop()."""
        return not self._stopping.wait(seconds)

    def _connection_opened(self) -> None:
        with self._lock:
            self._connections += 1

    def _connection_closed(self) -> None:
        with self._lock:
            self._closed += 1

    # -- addresses and settings ----------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("start the fake upstream first: its port is chosen when it binds")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def avaturn_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def daily_room_url(self) -> str:
        """Where `room_url` points: answers 404, so a Daily join never completes."""
        return f"{self.url}/_fake/daily-room"

    @property
    def standin_sdk_url(self) -> str:
        """The stand-in web SDK this fake serves: a widget goes live with it offline."""
        return f"{self.url}{STANDIN_SDK_PATH}"

    @property
    def cartesia_url(self) -> str:
        return self.url

    def settings(self) -> dict[str, Any]:
        """Entries to merge into the ``AVATURN`` Django setting.

        The widget loads the stand-in SDK (no integrity hash: it is served
        from loopback): the real one needs the internet to go live. For the
        Cartesia engine, merge ``cartesia_settings()`` into ``CARTESIA`` too.
        """
        return {
            "API_URL": self.avaturn_url,
            "OPENAI_BASE_URL": self.openai_base_url,
            "API_KEY": self.avaturn_api_key,
            "OPENAI_API_KEY": self.openai_api_key,
            "SDK_URL": self.standin_sdk_url,
            "SDK_INTEGRITY": "",
        }

    def cartesia_settings(self, **extra: Any) -> dict[str, Any]:
        """Entries of the ``CARTESIA`` section for this fake (its URL and key), plus ``extra``.

        ``fake.cartesia_settings(AGENT_ID="agent_test")`` is a whole section.
        """
        return {"API_URL": self.cartesia_url, "API_KEY": self.cartesia_api_key, **extra}

    # -- inspection ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, route: str) -> list[RecordedRequest]:
        with self._lock:
            return [request for request in self._requests if request.route == route]

    @property
    def sessions(self) -> dict[str, FakeSession]:
        with self._lock:
            return dict(self._sessions)

    @property
    def tokens_issued(self) -> dict[str, IssuedToken]:
        """The Cartesia access tokens handed out, by value."""
        with self._lock:
            return dict(self._tokens)

    @property
    def engine_clients(self) -> dict[str, AvaturnEngineClient]:
        """The engine client connected for each external-engine session, by session id."""
        with self._lock:
            return dict(self._engine_clients)

    def engine_client(self, session_id: str) -> AvaturnEngineClient | None:
        with self._lock:
            return self._engine_clients.get(session_id)

    def live_session_ids(self) -> set[str]:
        with self._lock:
            return {sid for sid, session in self._sessions.items() if session.live}

    @property
    def secrets_issued(self) -> dict[str, IssuedSecret]:
        with self._lock:
            return dict(self._secrets)

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since start (or the last reset)."""
        with self._lock:
            return self._connections

    @property
    def connections_closed(self) -> int:
        """Connections closed, by either side, since start (or the last reset).

        Opened but never closed means kept alive: a client whose pool grows
        to a new peak opens connections without closing any; one that
        discards and reopens them shows both.
        """
        with self._lock:
            return self._closed

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def state(self) -> dict[str, Any]:
        """A JSON-ready summary; what ``GET /_fake/state`` answers."""
        with self._lock:
            sessions = [
                {
                    "session_id": session.session_id,
                    "avatar_id": session.avatar_id,
                    "live": session.live,
                    "created_at": session.created_at,
                    "ended_at": session.ended_at,
                    "tasks": list(session.tasks),
                    "engine": session.engine,
                    "engine_connection": (
                        self._engine_clients[session.session_id].summary()
                        if session.session_id in self._engine_clients
                        else None
                    ),
                }
                for session in self._sessions.values()
            ]
            return {
                "url": self.url if self.running else None,
                "live_sessions": [item["session_id"] for item in sessions if item["live"]],
                "sessions": sessions,
                "counts": dict(self._counts),
                "connections_opened": self._connections,
                "connections_closed": self._closed,
                "secrets_issued": len(self._secrets),
                "tokens_issued": len(self._tokens),
                "faults": [
                    {k: v for k, v in asdict(fault).items() if k != "body"}
                    for queue in self._faults.values()
                    for fault in queue
                ],
                "latency": dict(self._latency),
                "recent_requests": [
                    {"route": r.route, "method": r.method, "path": r.path, "at": r.at}
                    for r in self._requests[-RECENT_REQUESTS_IN_STATE:]
                ],
            }

    # -- control ---------------------------------------------------------------------

    def reset(self) -> None:
        """Forget sessions, secrets, requests, counters and faults; restore latency.

        Engine clients still connected are closed first, as ending their sessions would."""
        self._close_engine_clients()
        with self._lock:
            self._init_state()
            self.gone_avatars.clear()
            self.gone_avatars.update(self._initial_gone)

    def fail(
        self,
        route: str,
        *,
        status: int = 500,
        body: Any = None,
        times: int | None = 1,
        mode: str = MODE_STATUS,
        delay: float | None = None,
    ) -> None:
        """Queue a failure for the next `times` requests to `route` (None: until cleared).

        Modes that answer without doing the work: ``"status"`` (answer `status`
        with `body`, or an upstream-shaped error) and ``"close"`` (hang up
        without answering). Modes that do the work and then spoil the answer:
        ``"timeout"``/``"delay"`` (answer after `delay` seconds; a client that
        gave up leaves the effect behind), ``"malformed"`` (truncated JSON),
        ``"missing_fields"`` (a JSON object without the expected fields),
        ``"drip"`` (the body one byte every `delay` seconds), and, for
        ``avaturn.create`` only, ``"create_then_status"`` (the session is
        created and live, but the answer is `status`). `delay` also applies to
        ``"status"`` and ``"close"`` as a wait before answering. Queued
        failures are used in order.
        """
        _check_route(route)
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; expected one of {sorted(FAULT_MODES)}")
        if mode == MODE_CREATE_THEN_STATUS and route != AVATURN_CREATE:
            raise ValueError(f"mode {mode!r} applies only to route {AVATURN_CREATE!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise ValueError("times must be a positive integer or None")
        wait = DEFAULT_DELAYS.get(mode, 0.0) if delay is None else _check_seconds(delay, "delay")
        fault = Fault(route, mode, status, answers.fault_body(body), times, wait)
        with self._lock:
            self._faults.setdefault(route, deque()).append(fault)

    def clear_faults(self, route: str | None = None) -> None:
        with self._lock:
            if route is None:
                self._faults.clear()
            else:
                self._faults.pop(route, None)

    def set_latency(self, route: str, seconds: float) -> None:
        """Wait `seconds` before every answer on `route` (0 removes the wait)."""
        _check_route(route)
        wait = _check_seconds(seconds, "latency")
        with self._lock:
            if wait:
                self._latency[route] = wait
            else:
                self._latency.pop(route, None)

    def end_session(self, session_id: str) -> bool:
        """End a live session as Avaturn would on its own (user left, secret expired)."""
        with self._lock:
            return self._end(session_id)

    # -- request handling (called from server threads) ---------------------------------

    def dispatch(self, incoming: Incoming) -> Reply:
        path = urlsplit(incoming.path).path
        if _SDK_MESSAGES_PATH.fullmatch(path):
            return self._sdk_messages(incoming)
        if path.startswith(_CONTROL_PREFIX) and not _browser_route(path):
            return self._control(incoming.method, path, incoming.body)
        route, params = self._match(incoming.method, path)
        record = RecordedRequest(
            route=route,
            method=incoming.method,
            path=incoming.path,
            headers=dict(incoming.headers),
            body=incoming.body,
            json=answers.parse_json(incoming.body),
            at=self.clock(),
        )
        with self._lock:
            self._requests.append(record)
            self._counts[route] += 1
            fault = self._take_fault(route)
            reply = self._answer(route, params, record, fault)
            reply.delay += self._latency.get(route, 0.0)
        if route in _BROWSER_ROUTES:
            reply.headers.update(_cors_headers(incoming.headers, preflight=route == SDK_PREFLIGHT))
        return reply

    @staticmethod
    def _match(method: str, path: str) -> tuple[str, dict[str, str]]:
        browser_route = _browser_route(path)
        if browser_route is not None:
            return browser_route, {}
        for route_method, pattern, route in _ROUTES:
            found = pattern.fullmatch(path)
            if found and route_method == method:
                return route, found.groupdict()
        return UNKNOWN, {}

    def _take_fault(self, route: str) -> Fault | None:
        queue = self._faults.get(route)
        if not queue:
            return None
        fault = queue[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.popleft()
        return replace(fault)

    def _answer(
        self, route: str, params: dict[str, str], record: RecordedRequest, fault: Fault | None
    ) -> Reply:
        if fault is not None and fault.mode in (MODE_STATUS, MODE_CLOSE):
            return self._fault_reply(fault)
        reply = self._handle(route, params, record)
        if fault is None:
            return reply
        if fault.mode == MODE_CREATE_THEN_STATUS:
            return self._fault_reply(fault)
        if fault.mode == MODE_MALFORMED:
            reply.body = answers.malformed(reply.body)
        elif fault.mode == MODE_MISSING_FIELDS:
            reply.body = answers.MISSING_FIELDS_BODY
        elif fault.mode == MODE_DRIP:
            reply.drip = fault.delay
        else:  # timeout, delay
            reply.delay = fault.delay
        return reply

    @staticmethod
    def _fault_reply(fault: Fault) -> Reply:
        if fault.mode == MODE_CLOSE:
            return Reply(0, close=True, delay=fault.delay)
        body = fault.body
        if body is None:
            body = answers.default_fault_body(fault.route == OPENAI_CLIENT_SECRET, fault.status)
        return Reply(fault.status, body, delay=fault.delay)

    def _handle(self, route: str, params: dict[str, str], record: RecordedRequest) -> Reply:
        if route == OPENAI_CLIENT_SECRET:
            return self._client_secret(record)
        if route == CARTESIA_ACCESS_TOKEN:
            return self._access_token(record)
        if route == SDK_SESSION:
            return self._sdk_session(record)
        if route == SDK_PREFLIGHT:
            return Reply(204)
        if route == DAILY_ROOM:
            return answers.detail(404, "Fake Daily room: a join never completes here.")
        if route == STANDIN_SDK:
            return _standin_sdk()
        if route == UNKNOWN:
            return answers.detail(404, "Not found (fake upstream).")
        if record.headers.get("authorization") != f"Bearer {self.avaturn_api_key}":
            return answers.detail(401, "Invalid or missing API key.")
        if route == AVATURN_CREATE:
            return self._create(record)
        if route == AVATURN_TERMINATE:
            return self._terminate(params["session_id"])
        return self._task(params["session_id"], record)

    def _client_secret(self, record: RecordedRequest) -> Reply:
        if record.headers.get("authorization") != f"Bearer {self.openai_api_key}":
            # Unlike the real service, not even a masked key goes into the message.
            return answers.openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        problem = answers.client_secret_problem(record.json)
        if problem is not None:
            return problem
        now = int(self.clock())
        expires_at = now + answers.client_secret_seconds(record.json)
        value = f"ek_fake_{secrets.token_hex(16)}"
        session = answers.effective_session(
            record.json["session"], f"sess_fake_{secrets.token_hex(8)}", expires_at
        )
        self._secrets[value] = IssuedSecret(value, expires_at, session, now)
        return answers.json_reply(
            200, {"value": value, "expires_at": expires_at, "session": session}
        )

    def _access_token(self, record: RecordedRequest) -> Reply:
        if record.headers.get("authorization") != f"Bearer {self.cartesia_api_key}":
            return answers.detail(401, "Invalid or missing API key.")
        if record.headers.get("cartesia-version") not in CARTESIA_VERSIONS:
            return answers.detail(400, "Cartesia-Version: a supported version is required.")
        problem = answers.access_token_problem(record.json)
        if problem is not None:
            return problem
        now = int(self.clock())
        seconds = record.json.get("expires_in", answers.ACCESS_TOKEN_DEFAULT_SECONDS)
        value = f"ctk_fake_{secrets.token_hex(16)}"
        self._tokens[value] = IssuedToken(value, now + seconds, dict(record.json["grants"]), now)
        return answers.json_reply(200, {"token": value})

    def _credential_problem(self, engine: Mapping[str, Any], now: float) -> Reply | None:
        """422 unless the engine's credential is one this fake issued, unexpired."""
        if engine["type"] == "openai-realtime":
            issued = self._secrets.get(engine["client_secret"])
            if issued is None or issued.expires_at <= now:
                return answers.detail(
                    422, "conversation_engine.client_secret: not a valid, unexpired client secret"
                )
        if engine["type"] == "cartesia":
            token = self._tokens.get(engine["access_token"])
            if token is None or token.expires_at <= now or not token.grants.get("agent"):
                return answers.detail(
                    422, "conversation_engine.access_token: not a valid, unexpired agent token"
                )
        return None

    def _create(self, record: RecordedRequest) -> Reply:
        problem = answers.create_body_problem(record.json)
        if problem is not None:
            return problem
        body: dict[str, Any] = record.json
        engine = body["conversation_engine"]
        now = self.clock()
        problem = self._credential_problem(engine, now)
        if problem is not None:
            return problem
        secret_value = engine.get("client_secret") or engine.get("access_token") or ""
        avatar_id = body.get("avatar_id")
        if avatar_id in self.gone_avatars:
            return answers.detail(410, f"Avatar {avatar_id!r} no longer exists.")
        session = FakeSession(
            session_id=f"fake-sess-{secrets.token_hex(8)}",
            token=f"fake-tok-{secrets.token_hex(16)}",
            client_secret=secret_value,
            body=body,
            created_at=now,
        )
        self._sessions[session.session_id] = session
        self._live_by_token[session.token] = session.session_id
        if engine["type"] == "external" and self._should_connect(engine["url"]):
            self._connect_engine(session.session_id, engine)
        return answers.json_reply(201, {"session_id": session.session_id, "token": session.token})

    def _should_connect(self, url: str) -> bool:
        if self.connect_engines is not None:
            return self.connect_engines
        if not is_loopback_host(urlsplit(url).hostname or ""):
            return False
        try:
            import websockets  # noqa: F401  (the engine client's; an optional dependency)
        except ImportError:
            # A loopback engine, as a site's tests may name: say why nothing connects
            # (the session stays live, as with an engine beyond loopback).
            logger.warning(
                "The fake does not connect to the external engine at %s: playing Avaturn's "
                "side of an engine socket needs websockets (pip install "
                "'django-avaturn[engine]').",
                url,
            )
            return False
        return True

    def _connect_engine(self, session_id: str, engine: Mapping[str, Any]) -> None:
        """Connect to the external engine as Avaturn does, from a thread of the client's own.

        The engine closing its socket, or refusing it, ends the session."""
        from .engine_client import AvaturnEngineClient  # needs websockets: only when used

        def closed(client: AvaturnEngineClient) -> None:
            if client.closed_by != "client":
                self.end_session(session_id)

        def to_page(data: dict[str, Any]) -> None:
            # As Avaturn passes an engine's message on to the page: the stand-in SDK
            # polls for it. Dropped once the session has ended, or when it has no type.
            with contextlib.suppress(ValueError):
                self.send_browser_message(session_id, data)

        audio = engine.get("audio")
        user = audio.get("user") if isinstance(audio, dict) else None
        rate = user.get("sample_rate", 24000) if isinstance(user, dict) else 24000
        options = {
            "sample_rate": rate,
            **self.engine_client_options,
            "on_close": closed,
            "on_browser_message": to_page,
        }
        client = AvaturnEngineClient(engine["url"], engine.get("headers") or {}, **options)
        self._engine_clients[session_id] = client
        client.start(wait=False)

    def _close_engine_clients(self) -> None:
        with self._lock:
            clients = list(self._engine_clients.values())
        for client in clients:
            client.close()

    def _end(self, session_id: str) -> bool:
        session = self._sessions.get(session_id)
        if session is None or not session.live:
            return False
        self._sessions[session_id] = replace(session, ended_at=self.clock())
        self._live_by_token.pop(session.token, None)
        client = self._engine_clients.get(session_id)
        if client is not None:  # the session's end closes the engine's stream
            client.close(wait=False)
        return True

    def _terminate(self, session_id: str) -> Reply:
        if not self._end(session_id):
            return answers.detail(404, "Session not found.")
        return answers.json_reply(200, {"status": "terminated"})

    def _task(self, session_id: str, record: RecordedRequest) -> Reply:
        session = self._sessions.get(session_id)
        if session is None or not session.live:
            return answers.detail(404, "Session not found.")
        payload = record.json
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            return answers.detail(422, "text: field required")
        self._sessions[session_id] = replace(session, tasks=(*session.tasks, payload["text"]))
        return answers.json_reply(200, {"task_id": f"fake-task-{secrets.token_hex(8)}"})

    def _sdk_session(self, record: RecordedRequest) -> Reply:
        session_id = self._live_by_token.get(record.headers.get("x-session-token", ""))
        if session_id is None:
            return answers.detail(401, "Invalid or expired session token.")
        return answers.json_reply(
            200,
            {
                "id": session_id,
                "limited_access_token": f"fake-lat-{secrets.token_hex(16)}",
                "room_url": f"{self.daily_room_url}/{session_id}",
                "session_config": {"uses_stacked_alpha": False},
            },
        )

    # -- the engine's messages to the page, delivered by the stand-in SDK ---------------

    def send_browser_message(self, session_id: str, message: Mapping[str, Any]) -> None:
        """Deliver `message` to the page of a live session, as Avaturn delivers the
        ``data`` of an engine's ``sdk.message.send``: the stand-in SDK, polling
        ``GET /_sdk/v0/sessions/messages?after=<n>`` with the session token, hands
        it to ``head.on(message["type"])`` and shows it in its placeholder. The
        engine client this fake connects for an external engine sends each of its
        engine's ``sdk.message.send`` here itself.

        ``ValueError`` for a session that is not live here or a message that is
        not a JSON object with a string ``type`` (the SDK would drop it).
        """
        if not isinstance(message, Mapping) or not isinstance(message.get("type"), str):
            raise ValueError("a browser message is a JSON object with a string 'type'")
        try:  # a copy, and JSON as it would travel
            payload: dict[str, Any] = json.loads(json.dumps(dict(message)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a browser message must be JSON: {exc}") from None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or not session.live:
                raise ValueError(f"no live session {session_id!r} at the fake")
            self._browser_messages.setdefault(session_id, []).append(payload)

    def browser_messages(self, session_id: str) -> list[dict[str, Any]]:
        """What `send_browser_message` delivered to a session's page, in order."""
        with self._lock:
            return list(self._browser_messages.get(session_id, ()))

    def _sdk_messages(self, incoming: Incoming) -> Reply:
        if incoming.method == "OPTIONS":
            reply = Reply(204)
        elif incoming.method != "GET":
            reply = answers.detail(405, "Method not allowed.")
        else:
            query = parse_qs(urlsplit(incoming.path).query)
            after = query.get("after", ["0"])[0]
            with self._lock:
                session_id = self._live_by_token.get(incoming.headers.get("x-session-token", ""))
                messages = self._browser_messages.get(session_id or "", [])
                if session_id is None:
                    reply = answers.detail(401, "Invalid or expired session token.")
                elif not after.isdigit():
                    reply = answers.detail(400, "after: a count of messages already seen")
                else:
                    reply = answers.json_reply(
                        200, {"messages": messages[int(after) :], "next": len(messages)}
                    )
        preflight = incoming.method == "OPTIONS"
        reply.headers.update(_cors_headers(incoming.headers, preflight=preflight))
        return reply

    # -- control API -------------------------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        action = path[len(_CONTROL_PREFIX) :].strip("/")
        if (method, action) == ("GET", "state"):
            return answers.json_reply(200, self.state())
        if method != "POST" or action not in {"reset", "fail", "latency", "clear-faults"}:
            return answers.detail(404, "Unknown control endpoint.")
        if action == "reset":
            self.reset()
            return answers.json_reply(200, {"status": "reset"})
        payload = answers.parse_json(body) if body else {}
        if not isinstance(payload, dict):
            return answers.detail(400, "The body must be a JSON object.")
        try:
            if action == "fail":
                _call_with_args(self.fail, payload, required=("route",))
            elif action == "latency":
                _call_with_args(self.set_latency, payload, required=("route", "seconds"))
            else:
                self.clear_faults(payload.get("route"))
        except (TypeError, ValueError) as exc:
            return answers.detail(400, str(exc))
        return answers.json_reply(200, {"status": "ok"})


def _browser_route(path: str) -> str | None:
    for pattern, route in _BROWSER_PATHS:
        if pattern.fullmatch(path):
            return route
    return None


def _standin_sdk() -> Reply:
    """The stand-in web SDK (``standin-sdk.js``): what lets a widget go live offline."""
    body = files(__package__).joinpath("standin-sdk.js").read_bytes()
    return Reply(
        200,
        body,
        headers={"Content-Type": "text/javascript; charset=utf-8", "Cache-Control": "no-store"},
    )


def _call_with_args(
    function: Callable[..., None], payload: dict[str, Any], required: Iterable[str]
) -> None:
    missing = [name for name in required if name not in payload]
    if missing:
        raise ValueError(f"missing: {', '.join(missing)}")
    positional = [payload[name] for name in ("route",)]
    keywords = {name: value for name, value in payload.items() if name != "route"}
    function(*positional, **keywords)


def _cors_headers(request_headers: Mapping[str, str], *, preflight: bool) -> dict[str, str]:
    headers = {
        "Access-Control-Allow-Origin": request_headers.get("origin", "*"),
        "Vary": "Origin",
    }
    if preflight:
        requested = request_headers.get("access-control-request-headers", "")
        headers.update(
            {
                "Access-Control-Allow-Methods": "GET, OPTIONS",
                "Access-Control-Allow-Headers": ", ".join(
                    filter(None, ["X-Session-Token, Content-Type", requested])
                ),
                "Access-Control-Max-Age": "600",
            }
        )
    return headers
