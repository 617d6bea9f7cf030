"""A second tool module that reuses a name of ``engine_tools_example``'s."""

from __future__ import annotations

from django_avaturn.engine import ToolContext, tool
from tests.engine_tools_example import add


@tool(name="whoami")
def another_whoami(ctx: ToolContext) -> str:
    """Someone else's idea of who the visitor is."""
    return "nobody"


__all__ = ["add", "another_whoami"]
