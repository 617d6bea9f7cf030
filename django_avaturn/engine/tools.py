"""The site's tools: ``@tool``, their registry, and running one call of the model's.

A tool is a plain function (sync or async) whose first parameter is the
``ToolContext``; the rest are its arguments, described to the model by a JSON
schema made from their type hints and the docstring (``engine/schema.py``).
The model never chooses whose data a tool sees: ``ctx.user`` is the session's
user, re-read from the database for every call.

``ToolRunner`` is the bridge's ``run_tool``. For each call it re-checks that
the session is still starting or live, that its user is still active and,
when the tool names one, that the user has its permission; validates the
arguments; runs the tool within its timeout (a sync tool in a thread of its
own, never on the socket's loop); records a ``ToolCall`` row; and returns the
JSON text the model reads: ``{"result": ...}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import inspect
import json
import math
import re
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from django.core.exceptions import SynchronousOnlyOperation
from django.core.serializers.json import DjangoJSONEncoder
from django.db import close_old_connections, connections

from django_avaturn.engine.schema import (
    ArgumentError,
    Field,
    Object,
    annotated_description,
    parse_docstring,
    resolve_hints,
    shape_of,
)
from django_avaturn.exceptions import NotConfigured
from django_avaturn.logs import get_logger

if TYPE_CHECKING:
    from django_avaturn.models import Session

logger = get_logger(__name__)

# OpenAI's rule for a function's name.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# send_to_browser's data, as compact JSON. Daily (which carries Avaturn's app
# messages) caps one near 4096 bytes, and our envelope and Avaturn's own go
# around the data: well under it.
BROWSER_MESSAGE_MAX_BYTES = 3000
# Sync tools running at once in this process. A tool thread past its timeout
# cannot be killed and keeps its slot until it returns.
MAX_TOOL_THREADS = 32
# Of those, one conversation's at most: a model made to call a tool that hangs
# again and again takes no more than these.
MAX_TOOL_THREADS_PER_SESSION = 4
# A tool's answer as the model reads it, at most: OpenAI bills it all as input,
# and more would fill much of a realtime conversation's context.
TOOL_RESULT_MAX_CHARS = 50_000
# Call ids whose outcome a runner remembers (one conversation's worth and more).
REMEMBERED_CALLS = 512
# What a recorded call's unparseable arguments are cut to.
RAW_ARGUMENTS_KEPT = 1000

TOOL_ATTRIBUTE = "avaturn_tool"

F = TypeVar("F", bound=Callable[..., Any])


class ToolError(Exception):
    """Raised by a tool to refuse: its message is given to the model, to tell the user."""

    def __init__(self, message: str) -> None:
        self.message = str(message)
        super().__init__(self.message)


class _FixedMessage:
    """An exception of ours whose message names no value a tool held: it is logged."""


class BrowserMessageRefused(_FixedMessage, TypeError, ValueError):
    """``send_to_browser()`` refused its data: not a dict, not JSON, not text, or too big.

    A ``TypeError`` and a ``ValueError`` both, so either ``except`` catches it.
    Its message names sizes and types, never a value.
    """


class SendToBrowserClosed(_FixedMessage, RuntimeError):
    """``send_to_browser()`` was called after its tool call had ended."""


@dataclasses.dataclass(frozen=True)
class ToolContext:
    """What a tool knows besides its arguments: who it acts for, and where.

    ``user`` and ``session`` are the session's, read from the database when
    the call began (never taken from the model's arguments). ``call_id`` is
    the model's id of this call: the same call is never run twice in one
    session, so it can serve as an idempotency key for what the tool does
    elsewhere. ``deliver`` is where ``send_to_browser``'s checked data goes (the
    runner's; in a test of your own tool, ``list.append`` will do).
    """

    user: Any
    session: Session
    call_id: str
    deliver: Callable[[dict[str, Any]], None] = dataclasses.field(repr=False, compare=False)

    def send_to_browser(self, data: dict[str, Any]) -> None:
        """Send ``data`` to the visitor's page (an ``avaturn:message`` event's ``detail``).

        Callable from a sync tool's thread and from an async tool alike. The
        data must be a JSON-serialisable dict of at most
        ``BROWSER_MESSAGE_MAX_BYTES`` bytes as JSON: send a link or an id,
        not a document. It is copied when called, so changing it later changes
        nothing sent.
        """
        if not isinstance(data, dict):
            raise BrowserMessageRefused(
                f"send_to_browser() takes a dict, not {type(data).__name__}."
            )
        try:
            encoded = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BrowserMessageRefused(
                f"send_to_browser()'s data must be JSON-serialisable: {exc}"
            ) from None
        except RecursionError:
            raise BrowserMessageRefused(
                "send_to_browser()'s data is nested too deeply for JSON."
            ) from None
        try:
            size = len(encoded.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise BrowserMessageRefused(
                "send_to_browser()'s data is not valid text: a lone surrogate at character "
                f"{exc.start} of its JSON."
            ) from None
        if size > BROWSER_MESSAGE_MAX_BYTES:
            raise BrowserMessageRefused(
                f"send_to_browser()'s data is {size} bytes as JSON; one message holds at most "
                f"{BROWSER_MESSAGE_MAX_BYTES}. Send a link or an id rather than the content."
            )
        self.deliver(json.loads(encoded))


@dataclasses.dataclass(frozen=True)
class Tool:
    """A function the model may call, as ``@tool`` described it."""

    name: str
    description: str
    func: Callable[..., Any]
    parameters: Object
    permission: str | None = None
    timeout: float | None = None
    is_async: bool = False

    def definition(self) -> dict[str, Any]:
        """The tool as OpenAI Realtime's session config lists it (a GA function tool)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters.schema(),
        }

    @property
    def origin(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    permission: str | None = None,
    timeout: float | None = None,
) -> Callable[[F], F]: ...


def tool(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    permission: str | None = None,
    timeout: float | None = None,
) -> F | Callable[[F], F]:
    """Make ``func`` a tool the model may call: ``@tool`` or ``@tool(name=..., ...)``.

    ``name`` defaults to the function's name, ``description`` to its
    docstring's text before the first section. ``permission``
    (``"app_label.codename"``) is checked with ``user.has_perm`` on every
    call. ``timeout`` (seconds) overrides ``SITE_ENGINE["TOOL_TIMEOUT"]``.
    The function itself is returned unchanged, so it can still be called
    directly (in your own tests, with a ``ToolContext``).
    """

    def decorate(function: F) -> F:
        spec = _describe(
            function, name=name, description=description, permission=permission, timeout=timeout
        )
        setattr(function, TOOL_ATTRIBUTE, spec)
        return function

    return decorate(func) if func is not None else decorate


def _describe(
    func: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    permission: str | None,
    timeout: float | None,
) -> Tool:
    where = f"@tool {getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
    if not callable(func):
        raise TypeError(f"{where}: @tool decorates a function.")
    tool_name = getattr(func, "__name__", "") if name is None else name
    if not isinstance(tool_name, str) or not NAME_PATTERN.match(tool_name):
        raise ValueError(
            f"{where}: the tool's name {tool_name!r} must be 1 to 64 letters, digits, "
            "underscores or hyphens."
        )
    if permission is not None and (
        not isinstance(permission, str) or permission.count(".") != 1 or " " in permission
    ):
        raise ValueError(f"{where}: permission must read 'app_label.codename', not {permission!r}.")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300
    ):
        raise ValueError(f"{where}: timeout must be a number of seconds above 0, at most 300.")
    params = list(inspect.signature(func).parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(f"{where}: its first parameter must be the context (ctx: ToolContext).")
    # ToolContext resolves even where a module imports it only under TYPE_CHECKING.
    hints = resolve_hints(func, where, {"ToolContext": ToolContext})
    first = hints.get(params[0].name)
    if first is not None and first is not ToolContext:
        raise TypeError(f"{where}: its first parameter is the context; annotate it ToolContext.")
    summary, documented = parse_docstring(inspect.getdoc(func))
    fields = []
    for param in params[1:]:
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{where}: *args and **kwargs cannot be described to the model.")
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{where}: {param.name!r} is positional-only; tools take keywords.")
        if param.name not in hints:
            raise TypeError(f"{where}: parameter {param.name!r} needs a type hint.")
        hint = hints[param.name]
        fields.append(
            Field(
                param.name,
                shape_of(hint, f"{where}, parameter {param.name!r}"),
                param.default is inspect.Parameter.empty,
                annotated_description(hint) or documented.get(param.name, ""),
            )
        )
    return Tool(
        name=tool_name,
        description=summary if description is None else description,
        func=func,
        parameters=Object(fields),
        permission=permission,
        timeout=None if timeout is None else float(timeout),
        is_async=inspect.iscoroutinefunction(func),
    )


# ---------------------------------------------------------------------- the registry


class ToolRegistry:
    """The tools one conversation offers the model, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for spec in tools:
            self.add(spec)

    def add(self, spec: Tool) -> None:
        """Add ``spec``; ``NotConfigured`` if another tool already has its name."""
        existing = self._tools.get(spec.name)
        if existing is spec:
            return
        if existing is not None:
            raise NotConfigured(
                f"Two site tools are named {spec.name!r}: {existing.origin} and {spec.origin}. "
                "Rename one with @tool(name=...)."
            )
        self._tools[spec.name] = spec

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def definitions(self) -> list[dict[str, Any]]:
        """Every tool as the Realtime session config's ``tools`` lists them."""
        return [spec.definition() for spec in self._tools.values()]

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools


def tools_in(module: ModuleType) -> list[Tool]:
    """The ``@tool`` functions bound at ``module``'s top level (defined or imported there)."""
    found = []
    for attribute, value in list(vars(module).items()):
        if not callable(value):
            continue
        spec = getattr(value, TOOL_ATTRIBUTE, None)
        if not isinstance(spec, Tool):
            continue
        if spec.func is not value:
            # Another decorator over @tool copied its attribute: the runner would
            # call the inner function and skip that decorator.
            raise NotConfigured(
                f"{module.__name__}.{attribute}: put @tool outermost, above other decorators."
            )
        found.append(spec)
    return found


def load_registry(modules: Sequence[str]) -> ToolRegistry:
    """The tools of ``modules`` (``SITE_ENGINE["TOOLS"]``); ``NotConfigured`` if one is wrong."""
    from django_avaturn.upstream.redaction import scrub

    registry = ToolRegistry()
    for dotted in modules:
        try:
            module = import_module(dotted)
        except Exception as exc:
            raise NotConfigured(
                f"AVATURN['SITE_ENGINE']['TOOLS'] names {dotted!r}, which cannot be imported: "
                f"{type(exc).__name__}: {scrub(str(exc))}"
            ) from None  # chained, the module's own error would reach Django's handling unscrubbed
        found = tools_in(module)
        if not found:
            raise NotConfigured(
                f"AVATURN['SITE_ENGINE']['TOOLS'] names {dotted!r}, which has no @tool functions."
            )
        for spec in found:
            registry.add(spec)
    return registry


# ---------------------------------------------------------------------- running a call


class _Overran(Exception):
    """The tool did not finish within its timeout (ours, not a TimeoutError of the tool's)."""


class _NoThread(Exception):
    """Every tool thread is taken, or every one this conversation may have."""


class _ResultEncoder(DjangoJSONEncoder):
    """Django's encoder (dates, decimals, UUIDs, lazy strings), plus dataclasses and enums."""

    def default(self, o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if isinstance(o, enum.Enum):
            return o.value
        return super().default(o)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    status: str
    output: str


# What the model hears when a tool failed, or its conversation is over.
TOOL_FAILED = "The tool failed. Tell the user it could not be done now."
CONVERSATION_ENDED = "This conversation has ended; the tool cannot run."


def _clipped(tool: str, message: str) -> str:
    """A ``ToolError``'s message cut to ``TOOL_RESULT_MAX_CHARS``, as the model is sent it."""
    if len(message) <= TOOL_RESULT_MAX_CHARS:
        return message
    logger.warning(
        "Site tool %r raised a ToolError of %d characters; the model is given the first %d.",
        tool,
        len(message),
        TOOL_RESULT_MAX_CHARS,
    )
    return message[:TOOL_RESULT_MAX_CHARS]


def _error(status: str, message: str) -> _Outcome:
    return _Outcome(status, json.dumps({"error": message}, ensure_ascii=False))


# Slots for sync tools' threads. Each runs in a daemon thread of its own rather
# than a ThreadPoolExecutor, whose threads the interpreter joins at exit: a tool
# stuck past its timeout must not hold up the process's shutdown.
_tool_slots = threading.BoundedSemaphore(MAX_TOOL_THREADS)


def _settle(
    future: asyncio.Future[Any], result: Any, error: BaseException | None, tool: str = ""
) -> None:
    if future.done():  # cancelled: the call timed out or its conversation ended
        if (
            error is not None
            and tool
            and isinstance(error, Exception)
            and not isinstance(error, ToolError)
        ):
            # Nobody waits for the answer now, but a tool that failed after overrunning
            # may have done part of its work: the site hears of it.
            _log_failure(tool, error)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _run_sync_tool(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    context: contextvars.Context,
    func: Callable[..., Any],
    ctx: ToolContext,
    kwargs: dict[str, Any],
    name: str,
    session_slots: threading.BoundedSemaphore,
) -> None:
    result: Any = None
    error: BaseException | None = None
    try:
        close_old_connections()
        result = context.run(func, ctx, **kwargs)
    except BaseException as exc:  # handed to the loop, which sorts them out
        error = exc
    finally:
        try:
            connections.close_all()  # this thread's own connections: it ends here
        finally:
            session_slots.release()
            _tool_slots.release()
    # A loop closed while the tool ran raises RuntimeError: nobody waits for it then.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, result, error, name)


# A queued database step: the loop awaiting it, its future there, the step.
_Step = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class _DatabaseThread:
    """Every conversation's tool database steps, one at a time, on one thread of their own.

    Not on the thread that ``thread_sensitive`` calls share: that one serves every
    conversation's sockets (authenticated there) and ends, which then queued behind the
    tools' checks and records. Nor on a pool of threads: each thread more contends for the
    GIL with the sockets' event loop, and the frames' latency paid for it.

    The thread keeps its connection from one step to the next while steps keep coming,
    and closes it (and ends) once none has come for ``idle`` seconds: opening and closing
    a connection per step (``close_old_connections`` with ``CONN_MAX_AGE`` 0) was most of a
    step's cost. Between steps, a connection that a failed step left unusable, or left
    outside autocommit, is closed as ``close_old_connections`` would; a site's positive
    ``CONN_MAX_AGE`` still retires one that outlived it. Each step is a whole unit: no
    transaction spans two.
    """

    def __init__(self, name: str, *, idle: float) -> None:
        self.name = name
        self.idle = idle
        self._ready = threading.Condition()
        self._steps: deque[_Step] = deque()
        self._thread: threading.Thread | None = None

    def submit(self, func: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue ``func``; the future (of the running loop) is settled with its outcome."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._ready:
            self._steps.append((loop, future, func))
            if self._thread is None:
                thread = threading.Thread(target=self._work, name=self.name)
                try:
                    thread.start()
                except BaseException:
                    # No thread (the process is out of them): this step fails, and
                    # the next one tries again rather than queue for a thread never begun.
                    self._steps.pop()
                    raise
                self._thread = thread
            else:
                self._ready.notify()
        return future

    def withdraw(self, future: asyncio.Future[Any]) -> bool:
        """Take ``future``'s step out of the queue if the thread has not begun it."""
        with self._ready:
            for index, step in enumerate(self._steps):
                if step[1] is future:
                    del self._steps[index]
                    return True
        return False

    def running(self) -> bool:
        """Whether the thread is up (a step queued or running, or idle less than ``idle``)."""
        with self._ready:
            return self._thread is not None

    def _work(self) -> None:
        close_old_connections()
        while True:
            with self._ready:
                if not self._steps:
                    self._ready.wait(self.idle)
                step = self._steps.popleft() if self._steps else None
            if step is None:
                connections.close_all()  # this thread's own
                with self._ready:
                    if not self._steps:
                        self._thread = None
                        return
                continue
            loop, future, func = step
            result: Any = None
            error: BaseException | None = None
            try:
                result = func()
            except BaseException as exc:  # handed to the loop, which sorts them out
                error = exc
            finally:
                _close_unusable_connections()
            # A loop closed meanwhile raises RuntimeError: nobody waits for it then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)


def _close_unusable_connections() -> None:
    """``close_old_connections`` between two steps of a busy database thread.

    The same tests (autocommit left changed; an error since the last commit, and the
    connection no longer usable), except the age test of ``CONN_MAX_AGE`` 0, which
    would close the connection after every step; a positive ``CONN_MAX_AGE`` applies.
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if conn.get_autocommit() != conn.settings_dict["AUTOCOMMIT"]:
            conn.close()
        elif conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()
        elif (
            conn.settings_dict["CONN_MAX_AGE"]
            and conn.close_at is not None
            and time.monotonic() >= conn.close_at
        ):
            conn.close()


# Seconds the tools' database thread keeps its connection without a step.
DB_IDLE_CLOSE = 0.5

# Seconds a call's outcome waits for its record before the model hears it anyway.
RECORD_WAIT = 2.0

_DB_STEPS = _DatabaseThread("avaturn-tool-db", idle=DB_IDLE_CLOSE)


class _DatabaseSlow(Exception):
    """A database step did not finish within the wait its caller allowed.

    Ours: a ``TimeoutError`` the step itself raised (a backend's socket timing out) is
    the step's failure, not this.
    """


async def _run_db(func: Callable[[], Any], *, within: float, read: bool = False) -> Any:
    """``func`` (one short database step of a tool call) on the tools' database thread.

    ``_DatabaseSlow`` if it has not finished ``within`` seconds: every conversation's
    steps in the process share the thread, and one stuck step holds up all behind it.
    A ``read`` abandoned so is skipped if the thread has not begun it; a write still
    runs, late. ``asyncio.wait`` bounds the wait rather than ``wait_for``, which before
    Python 3.12 could return the step's result though the caller had been cancelled
    meanwhile (and a tool would then run for a conversation that had ended).
    """
    step = _DB_STEPS.submit(func)
    try:
        await asyncio.wait((step,), timeout=within)
    except asyncio.CancelledError:
        _abandon(step, read)
        raise
    if not step.done():
        _abandon(step, read)
        raise _DatabaseSlow
    return step.result()


def _abandon(step: asyncio.Future[Any], read: bool) -> None:
    if read:
        _DB_STEPS.withdraw(step)  # (a write stays queued: it runs, late)
    step.cancel()  # (settled already, it is not logged as an exception never retrieved)


class ToolRunner:
    """Runs the model's tool calls for one session: the bridge's ``run_tool``.

    ``send_to_browser`` is called on the socket's loop with each message a
    tool sends (already checked and copied); it may return an awaitable,
    which is awaited in order, one after another.

    Idempotency: a call id seen before in this session is not run again; its
    first outcome is returned (awaited, if it is still running), and it
    stays recorded once. The engine socket is single-use, so one runner sees
    all of a session's calls. ``close()`` when the conversation ends.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        session: Session,
        user: Any,
        timeout: float,
        record_arguments: bool,
        send_to_browser: Callable[[dict[str, Any]], object],
    ) -> None:
        self.registry = registry
        self.session = session
        self.user = user
        self.timeout = float(timeout)
        self.record_arguments = record_arguments
        self._send = send_to_browser
        self._calls: OrderedDict[str, asyncio.Future[str]] = OrderedDict()
        self._sending = asyncio.Lock()
        self._sends: set[asyncio.Task[None]] = set()
        self._closed = False
        # This conversation's share of the process's tool threads.
        self._thread_slots = threading.BoundedSemaphore(MAX_TOOL_THREADS_PER_SESSION)

    @classmethod
    def from_settings(
        cls,
        registry: ToolRegistry,
        *,
        session: Session,
        send_to_browser: Callable[[dict[str, Any]], object],
    ) -> ToolRunner:
        """A runner for ``session`` (and its user) with ``AVATURN["SITE_ENGINE"]``'s timeout
        and argument recording."""
        from django_avaturn.conf import avaturn_settings

        engine = avaturn_settings.SITE_ENGINE
        return cls(
            registry,
            session=session,
            user=session.user,
            timeout=engine["TOOL_TIMEOUT"],
            record_arguments=engine["RECORD_TOOL_ARGUMENTS"],
            send_to_browser=send_to_browser,
        )

    async def __call__(self, call_id: str, name: str, arguments: str) -> str:
        """Run the model's call ``call_id`` of ``name``; the JSON text the model reads back."""
        earlier = self._calls.get(call_id)
        if earlier is not None:
            return await asyncio.shield(earlier)
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = done
        while len(self._calls) > REMEMBERED_CALLS:
            self._calls.popitem(last=False)
        try:
            output = await self._call(call_id, name, arguments)
        except BaseException:
            # Cancelled with its conversation: a retry of the id may run it.
            self._calls.pop(call_id, None)
            done.cancel()
            raise
        done.set_result(output)
        return output

    async def _call(self, call_id: str, name: str, arguments: str) -> str:
        started = time.monotonic()
        parsed, parse_error = _parse_arguments(arguments)
        recorded: Any = None
        if self.record_arguments:
            recorded = arguments[:RAW_ARGUMENTS_KEPT] if parse_error else parsed
        try:
            outcome = await self._outcome(call_id, name, parsed, parse_error)
        except asyncio.CancelledError:
            # Recorded without waiting (nothing may be awaited once cancelled), then
            # the cancellation goes on. Cut off by the conversation's end (``close``
            # comes first), or a cancellation of the tool's own: it failed.
            status = "cancelled" if self._closed else "failed"
            self._record_later(call_id, name, status, started, recorded)
            raise
        await self._record(call_id, name, outcome.status, started, recorded)
        return outcome.output

    async def _outcome(
        self, call_id: str, name: str, parsed: Any, parse_error: str | None
    ) -> _Outcome:
        if self._closed:
            return _error("denied", CONVERSATION_ENDED)
        spec = self.registry.get(name)
        if spec is None:
            listed = ", ".join(repr(known.name) for known in self.registry) or "none"
            return _error(
                "invalid", f"There is no tool named {name[:64]!r}. The tools are: {listed}."
            )
        timeout = spec.timeout or self.timeout
        try:
            access = await _run_db(lambda: self._recheck(spec), within=timeout, read=True)
        except _DatabaseSlow:
            logger.error(
                "Could not re-check a call of site tool %r within %g s: the database "
                "or the permission backend is not answering",
                spec.name,
                timeout,
            )
            return _error(
                "timeout",
                f"The tool could not be checked within {timeout:g} seconds. Tell the user "
                "it could not be done just now.",
            )
        except Exception as exc:  # the database, or a user model without has_perm
            # Its type only: a database's message may quote the arguments.
            logger.error(
                "Could not re-check a call of site tool %r: %s", spec.name, type(exc).__name__
            )
            return _error("failed", TOOL_FAILED)
        if isinstance(access, str):
            return _error("denied", access)
        user, session = access
        if parse_error is not None:
            return _error("invalid", parse_error)
        try:
            kwargs = spec.parameters.check(parsed, "")
        except ArgumentError as exc:
            return _error("invalid", f"Invalid arguments: {exc} Call {spec.name} again, corrected.")
        ended = threading.Event()
        ctx = ToolContext(user, session, call_id, self._deliverer(ended))
        try:
            result = await self._run(spec, ctx, kwargs, timeout)
        except _NoThread:
            return _error("failed", TOOL_FAILED)
        except _Overran:
            return _error(
                "timeout",
                f"The tool did not answer within {timeout:g} seconds. Tell the user it could "
                "not be done just now.",
            )
        except ToolError as exc:
            return _error("error", _clipped(spec.name, exc.message))
        except Exception as exc:
            _log_failure(spec.name, exc)
            return _error("failed", TOOL_FAILED)
        finally:
            ended.set()
        try:
            output = json.dumps(
                {"result": result}, cls=_ResultEncoder, allow_nan=False, ensure_ascii=False
            )
        except (TypeError, ValueError) as exc:
            _log_failure(spec.name, exc)
            return _error("failed", TOOL_FAILED)
        if len(output) > TOOL_RESULT_MAX_CHARS:
            logger.error(
                "Site tool %r answered %d characters as JSON; the model is given at most %d. "
                "Return a summary, or what the visitor asked for.",
                spec.name,
                len(output),
                TOOL_RESULT_MAX_CHARS,
            )
            return _error("failed", TOOL_FAILED)
        return _Outcome("ok", output)

    def _recheck(self, spec: Tool) -> tuple[Any, Session] | str:
        """The session's user and row as they are now, or why the call may not run."""
        from django_avaturn.models import SessionStatus
        from django_avaturn.sessions import statements

        row = statements.row_with_user(self.session.pk)
        if row is None or row.status not in (SessionStatus.STARTING, SessionStatus.LIVE):
            return CONVERSATION_ENDED
        user = row.user
        if user.pk != self.user.pk or not getattr(user, "is_active", True):
            return "The user's account is not active; the tool cannot run."
        if spec.permission and not user.has_perm(spec.permission):
            return "The user is not allowed to use this tool. Tell them so."
        return user, row

    async def _run(
        self, spec: Tool, ctx: ToolContext, kwargs: dict[str, Any], timeout: float
    ) -> Any:
        """The tool's return value; ``_Overran`` if it overran ``timeout``."""
        loop = asyncio.get_running_loop()
        waited: asyncio.Future[Any]
        if spec.is_async:
            waited = loop.create_task(spec.func(ctx, **kwargs))
        else:
            if not self._thread_slots.acquire(blocking=False):
                logger.error(
                    "Site tool %r not run for session row %s: its %d tool threads are busy "
                    "(tools stuck past their timeout?).",
                    spec.name,
                    self.session.pk,
                    MAX_TOOL_THREADS_PER_SESSION,
                )
                raise _NoThread
            if not _tool_slots.acquire(blocking=False):
                self._thread_slots.release()
                logger.error(
                    "Site tool %r not run: all %d tool threads are busy (tools stuck past "
                    "their timeout?).",
                    spec.name,
                    MAX_TOOL_THREADS,
                )
                raise _NoThread
            waited = loop.create_future()
            # A daemon thread; past the timeout it cannot be stopped, so it is left
            # to finish on its own and its result is dropped.
            try:
                threading.Thread(
                    target=_run_sync_tool,
                    args=(
                        loop,
                        waited,
                        contextvars.copy_context(),
                        spec.func,
                        ctx,
                        kwargs,
                        spec.name,
                        self._thread_slots,
                    ),
                    name=f"avaturn-tool-{spec.name}",
                    daemon=True,
                ).start()
            except BaseException:  # "can't start new thread": the slots are not taken
                self._thread_slots.release()
                _tool_slots.release()
                raise
        try:
            finished, _ = await asyncio.wait({waited}, timeout=timeout)
        except asyncio.CancelledError:
            waited.cancel()
            raise
        if not finished:
            # An async tool is cancelled, not awaited: one that ignores the
            # cancellation must not hold up the conversation.
            waited.cancel()
            waited.add_done_callback(_consume)
            raise _Overran
        return waited.result()

    def _deliverer(self, ended: threading.Event) -> Callable[[dict[str, Any]], None]:
        loop = asyncio.get_running_loop()

        def deliver(data: dict[str, Any]) -> None:
            if ended.is_set():
                raise SendToBrowserClosed("This tool call has ended; send_to_browser() is closed.")
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._forward(data)
            else:
                loop.call_soon_threadsafe(self._forward, data)

        return deliver

    def _forward(self, data: dict[str, Any]) -> None:
        """On the loop: hand ``data`` to the host's ``send_to_browser``, in order."""
        if self._closed:
            return
        try:
            sent = self._send(data)
        except Exception as exc:
            logger.error("Sending a tool's message to the browser failed: %s", type(exc).__name__)
            return
        if inspect.isawaitable(sent):
            task = asyncio.get_running_loop().create_task(self._in_order(sent))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _in_order(self, sending: Any) -> None:
        try:
            async with self._sending:  # asyncio's locks are FIFO: messages keep their order
                await sending
        except asyncio.CancelledError:
            # Dropped, perhaps before it began: a coroutine is closed (not "never
            # awaited"), a future cancelled (a no-op for one already done).
            if inspect.iscoroutine(sending):
                sending.close()
            elif asyncio.isfuture(sending):
                sending.cancel()
            raise
        except Exception as exc:
            logger.error("Sending a tool's message to the browser failed: %s", type(exc).__name__)

    def close(self) -> None:
        """The conversation has ended: drop the messages on their way to the browser.

        Their socket is closing; each would only fail against it. A tool still
        running (a sync one's thread) may send more: those are dropped too. A
        call that arrives after this is denied without running.
        """
        self._closed = True
        for task in list(self._sends):
            task.cancel()

    async def _record(
        self, call_id: str, name: str, status: str, started: float, arguments: Any
    ) -> None:
        """Record the call before the model hears its outcome, waiting at most ``RECORD_WAIT``.

        Past that the model hears it anyway; the record is still written, once
        the database thread reaches it.
        """
        write = self._writer(call_id, name, status, started, arguments)
        try:
            await _run_db(write, within=RECORD_WAIT)
        except _DatabaseSlow:
            logger.warning(
                "A call of site tool %r is recorded late: the database is not answering", name
            )

    def _record_later(
        self, call_id: str, name: str, status: str, started: float, arguments: Any
    ) -> None:
        write = self._writer(call_id, name, status, started, arguments)

        def write_and_close() -> None:
            try:
                write()
            finally:
                connections.close_all()

        threading.Thread(target=write_and_close, name="avaturn-tool-record", daemon=True).start()

    def _writer(
        self, call_id: str, name: str, status: str, started: float, arguments: Any
    ) -> Callable[[], None]:
        """The call's record as a database step; it logs its own failure (nobody may wait)."""
        duration_ms = round((time.monotonic() - started) * 1000)

        def write() -> None:
            try:
                self._write(call_id, name, status, duration_ms, arguments)
            except Exception as exc:  # the model's answer matters more than its record
                if self._session_gone():
                    logger.info(
                        "A call of site tool %r was not recorded: session row %s is gone "
                        "(its user deleted).",
                        name,
                        self.session.pk,
                    )
                    return
                logger.error(
                    "Could not record a call of site tool %r: %s", name, type(exc).__name__
                )

        return write

    def _session_gone(self) -> bool:
        from django_avaturn.models import Session

        try:
            return not Session.objects.primary().filter(pk=self.session.pk).exists()
        except Exception:  # the database itself failed: not known to be gone
            return False

    def _write(
        self, call_id: str, name: str, status: str, duration_ms: int, arguments: Any
    ) -> None:
        from django_avaturn.models import ToolCall
        from django_avaturn.sessions import statements

        statements.insert_row(
            ToolCall(
                session_id=self.session.pk,
                call_id=_storable(call_id)[:100],
                tool=_storable(name)[:100],
                status=status,
                duration_ms=duration_ms,
                arguments=_storable(arguments) if self.record_arguments else None,
            )
        )


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome so that asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


def _parse_arguments(arguments: str) -> tuple[Any, str | None]:
    if not arguments or not arguments.strip():
        return {}, None
    try:
        parsed = json.loads(arguments, parse_constant=_not_json, parse_float=_finite)
    except ValueError as exc:
        return None, f"The arguments are not valid JSON ({exc}). Send a JSON object."
    except RecursionError:
        return None, "The arguments are nested too deeply. Send a flat JSON object."
    if not isinstance(parsed, dict):
        return None, "The arguments must be a JSON object."
    return parsed, None


def _storable(value: Any) -> Any:
    """``value`` with NUL characters replaced: PostgreSQL's text and jsonb refuse them,
    and the model's arguments (which a visitor can steer) may hold one."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value


def _not_json(constant: str) -> Any:
    """``json.loads`` takes NaN and Infinity; JSON (and a database's JSON column) does not."""
    raise ValueError(f"{constant} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise ValueError(f"{text[:32]} is out of range")
    return number


def _log_failure(name: str, exc: BaseException) -> None:
    """Log a tool's exception: its type and where it was raised, not its message.

    The message may quote the arguments (personal data) or anything else the
    tool held; the frames (file, line, function, source line) show where. A
    message whose words are fixed (``_message_is_fixed``) says what to fix,
    and is logged.
    """
    frames = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if _message_is_fixed(exc):
        logger.error("Site tool %r failed with %s: %s Where:\n%s", name, kind, exc, frames.rstrip())
        return
    logger.error(
        "Site tool %r failed with %s (its message is not logged). Where:\n%s",
        name,
        kind,
        frames.rstrip(),
    )


def _message_is_fixed(exc: BaseException) -> bool:
    """Whether ``exc``'s message names no value the tool held: a refusal of ours
    (``send_to_browser``'s), or Django's ``SynchronousOnlyOperation`` (ORM work in
    an async tool)."""
    return isinstance(exc, (_FixedMessage, SynchronousOnlyOperation))
