"""A JSON 404 for paths under the API's own names that match no route.

Django answers them with its HTML 404 page, and a path missing its trailing
slash with ``APPEND_SLASH``'s redirect: for a ``POST`` under ``DEBUG``, a
``RuntimeError`` (an HTML 500), otherwise a 301 that clients follow with a
``GET``. The API promises JSON, so such a path answers ``404 not_found``,
saying which path was meant when only the slash is missing.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import Resolver404, resolve
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt  # it changes nothing: a CSRF failure page would only hide the JSON
def api_not_found(request: HttpRequest, **kwargs: Any) -> JsonResponse:
    detail = _("Not found.")
    if not request.path_info.endswith("/") and _routed(request, request.path_info + "/"):
        detail = _("Not found. The API's paths end in a slash: %(path)s") % {
            "path": request.path + "/"
        }
    return JsonResponse(
        {"code": "not_found", "detail": detail},
        status=404,
        headers={"Cache-Control": "no-store"},
    )


def _routed(request: HttpRequest, path: str) -> bool:
    """Whether ``path`` reaches a real view, not this one."""
    try:
        match = resolve(path, urlconf=getattr(request, "urlconf", None))
    except Resolver404:
        return False
    return match.func is not api_not_found
