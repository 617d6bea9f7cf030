"""Site tools the engine's tests load through ``load_registry``, as a site's module would be."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from django_avaturn.engine import ToolContext, ToolError, tool
from django_avaturn.models import ToolCall

# How often each call id ran a counted tool.
RUNS: Counter[str] = Counter()
# The slow sync tool: set when it has started, and set by the test to let it return.
SLOW_STARTED = threading.Event()
SLOW_RELEASE = threading.Event()
SLOW_FINISHED = threading.Event()
# Call ids of the slow async tool that saw their cancellation.
CANCELLED: list[str] = []
# The held card tool: set when it has started, and set by the test to let it send.
HELD_STARTED = threading.Event()
HELD_RELEASE = threading.Event()


@tool
def whoami(ctx: ToolContext) -> dict[str, Any]:
    """Who the visitor is: their email, and this conversation."""
    return {
        "email": ctx.user.email,
        "session": ctx.session.pk,
        "call_id": ctx.call_id,
        "thread": threading.current_thread().name,
    }


@tool
async def whoami_async(ctx: ToolContext) -> dict[str, Any]:
    """Who the visitor is, from an async tool."""
    return {"email": ctx.user.email, "thread": threading.current_thread().name}


@tool(permission="django_avaturn.view_toolcall")
def recorded_calls(ctx: ToolContext) -> int:
    """How many earlier tool calls this conversation has recorded."""
    return ToolCall.objects.filter(session=ctx.session).count()


@tool
def add(ctx: ToolContext, a: int, b: int = 0) -> int:
    """Add two whole numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    RUNS[ctx.call_id] += 1
    return a + b


@tool
def cancel_order(ctx: ToolContext, order: str) -> None:
    """Cancel one of the visitor's orders."""
    raise ToolError(f"Order {order} has already shipped; it cannot be cancelled.")


@tool
def explode(ctx: ToolContext, note: str) -> None:
    """A tool with a bug: its exception quotes its argument."""
    raise ValueError(f"cannot parse {note!r}")


@tool(timeout=0.2)
def slow_sync(ctx: ToolContext) -> str:
    """Takes longer than its timeout (until the test lets it go)."""
    SLOW_STARTED.set()
    SLOW_RELEASE.wait(30)
    SLOW_FINISHED.set()
    return "late"


@tool(timeout=0.2)
async def slow_async(ctx: ToolContext) -> str:
    """Takes longer than its timeout, and notices its cancellation."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        CANCELLED.append(ctx.call_id)
        raise
    return "late"


@tool
def show_card(ctx: ToolContext, title: str) -> str:
    """Show the visitor a card, from a sync tool (its thread)."""
    card = {"card": title, "n": 1}
    ctx.send_to_browser(card)
    card["n"] = 2  # sent as it was when sent
    ctx.send_to_browser(card)
    return "shown"


@tool
def show_card_when_released(ctx: ToolContext, title: str) -> str:
    """Show the visitor a card once the test lets this sync tool's thread go on."""
    HELD_STARTED.set()
    HELD_RELEASE.wait(5)
    ctx.send_to_browser({"card": title})
    return "shown"


@tool
async def show_card_async(ctx: ToolContext, title: str) -> str:
    """Show the visitor a card, from an async tool (the loop)."""
    ctx.send_to_browser({"card": title, "n": 1})
    await asyncio.sleep(0)
    ctx.send_to_browser({"card": title, "n": 2})
    return "shown"


@tool
def show_too_much(ctx: ToolContext, what: str) -> str:
    """Tries to send the browser what it must not; says what send_to_browser answered."""
    data: Any = {"blob": "x" * 5000} if what == "big" else {"when": object()}
    if what == "list":
        data = ["not", "a", "dict"]
    if what == "surrogate":
        data = {"text": "\ud800"}  # a str Python holds, which no UTF-8 encodes
    try:
        ctx.send_to_browser(data)
    except (TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "sent"


@tool
def unserialisable(ctx: ToolContext) -> object:
    """Returns what JSON cannot hold."""
    return {1, 2}


@tool
def echo(ctx: ToolContext, text: str) -> str:
    """Say ``text`` back.

    Args:
        text: Any text.
    """
    RUNS[ctx.call_id] += 1
    return text


@tool
def ratio(ctx: ToolContext, x: float) -> float:
    """``x`` as given, or NaN for zero (a result JSON cannot hold).

    Args:
        x: A number.
    """
    RUNS[ctx.call_id] += 1
    return x if x else float("nan")
