"""The API's one renderer: JSON that any string a client sent can pass through."""

from __future__ import annotations

from rest_framework.renderers import JSONRenderer


class AsciiJSONRenderer(JSONRenderer):
    """DRF's JSON renderer with non-ASCII text written as ``\\u`` escapes.

    JSON may carry a lone surrogate (``"\\ud800"``); UTF-8 cannot. DRF writes
    text unescaped and then encodes it, so an error message quoting such a
    string back (an unknown field's name, an invalid choice) raised during
    rendering, after the exception handler had run: an HTML 500. Escaped,
    every string is ASCII on the wire and means the same to any JSON reader.
    """

    ensure_ascii = True
