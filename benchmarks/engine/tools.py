"""The benchmark's one tool: trivial and async, so its round trip is the engine's own cost."""

from __future__ import annotations

from django_avaturn.engine import ToolContext, tool


@tool
async def bench_echo(ctx: ToolContext, text: str) -> str:
    """Say the text back.

    Args:
        text: Anything.
    """
    return text
