"""A tool module that only re-exports another's tool: the registry counts it once."""

from __future__ import annotations

from tests.engine_tools_example import add

__all__ = ["add"]
