"""A tool module with another decorator over @tool (which the registry refuses)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django_avaturn.engine import ToolContext, tool


def logged(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


@logged
@tool
def hidden(ctx: ToolContext) -> str:
    """Its outer decorator would be skipped."""
    return "x"
