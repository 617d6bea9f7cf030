"""A tool module whose import fails: a parameter type no JSON schema describes."""

from __future__ import annotations

from django_avaturn.engine import ToolContext, tool


@tool
def tags(ctx: ToolContext, names: set[str]) -> int:
    """Count tags."""
    return len(names)
