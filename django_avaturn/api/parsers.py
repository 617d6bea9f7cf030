"""The session API's one parser: JSON, and a body nested too deep is a 400 like any bad JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's ``JSONParser``, answering ``400 parse_error`` for a body nested too deep.

    Python's decoder recurses once per level of nesting: a couple of kilobytes
    of ``[`` raise ``RecursionError``, which DRF does not catch (it catches
    ``ValueError``), so the client would get a 500 for a body well under the
    size limit.
    """

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            # Not chained: the traceback would be thousands of frames of nothing.
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
