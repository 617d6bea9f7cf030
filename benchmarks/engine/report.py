"""Writes ENGINE_RESULTS.md (placeholder until the report lands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(data: dict[str, Any], path: Path) -> None:
    path.write_text("```\n" + json.dumps(data, indent=1) + "\n```\n")
