"""The session API's one parser: JSON, within Django's body size limit, and never a 500."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import IO, Any

from django.http import HttpRequest
from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's ``JSONParser``: ``413`` beyond Django's body limit, ``400`` for a body nested too deep.

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
        # Typed IO, but DRF before 3.17.2 hands over the request itself, read
        # as a stream past DATA_UPLOAD_MAX_MEMORY_SIZE; its ``body`` enforces
        # the limit (RequestDataTooBig: a JSON 413), as newer DRF does.
        source: object = stream
        if isinstance(source, HttpRequest):
            stream = io.BytesIO(source.body)
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            # Not chained: the traceback would be thousands of frames of nothing.
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
