"""OpenAPI annotations for the session API that cost nothing without drf-spectacular.

drf-spectacular is optional (the ``schema`` extra). When it is installed,
:func:`document` is its ``extend_schema``; when it is not, a no-op, so the
views carry their documentation either way and import nothing they may lack.

Each annotated method is pinned to drf-spectacular's own ``AutoSchema`` (unless
the project's ``DEFAULT_SCHEMA_CLASS`` already is one), so our endpoints appear
in a project's schema without it having to change DRF's default; DRF's own
schema generators never read that pin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.util import find_spec
from typing import Any, TypeVar

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from django_avaturn import __version__

SPECTACULAR_INSTALLED = find_spec("drf_spectacular") is not None

F = TypeVar("F", bound=Callable[..., Any])

TAG = "avaturn"

# drf-spectacular settings for a schema of this app alone (safe to import from a
# settings module: nothing here reads settings).
SCHEMA_SETTINGS: dict[str, Any] = {
    "TITLE": "django-avaturn session API",
    "DESCRIPTION": (
        "Start, list, end and heartbeat the caller's own avatar sessions; usage and "
        "transcripts. Every error is JSON `{code, detail}` (plus `errors` for 400s)."
    ),
    "VERSION": __version__,
    "PREPROCESSING_HOOKS": ["django_avaturn.api.views.only_avaturn_endpoints"],
    "COMPONENT_SPLIT_REQUEST": True,
}

# What each error status means, across the API; a view passes its own text when
# a status means something narrower there (409 on a heartbeat, say).
ERRORS: dict[int, str | Promise] = {
    400: _(
        "`invalid` (`errors` maps each field to its messages) or `parse_error`: "
        "the body is not a valid JSON object of the documented fields."
    ),
    403: _(
        "`not_authenticated` or `permission_denied`: anonymous or inactive user, "
        "a missing or wrong CSRF token, or a permission class refused."
    ),
    404: _("`not_found`: not one of the caller's sessions, or none."),
    413: _("`request_too_large`: the body is larger than `DATA_UPLOAD_MAX_MEMORY_SIZE`."),
    415: _("`unsupported_media_type`: the body is not `application/json`."),
    429: _(
        "`throttled` (too many starts; `Retry-After` says when to retry) or "
        "`quota_exceeded` (a quota is used up; adds `limit`, `allowed` and `resets_at`)."
    ),
    502: _("`upstream_error`: OpenAI or Avaturn refused, failed, or answered nonsense."),
    503: _(
        "`not_configured` (a key or setting is missing), `sessions_disabled` (the kill "
        "switch), `site_limit_reached` (`Retry-After: 60`), `session_still_ending` (a start: "
        "a session of the caller's did not end in time; `Retry-After: 30`) or `unavailable` "
        "(the database)."
    ),
    504: _("`upstream_timeout`: an upstream did not answer in time."),
}


def _identity(view_method: F) -> F:
    return view_method


def document(
    *,
    operation_id: str,
    summary: str | Promise,
    responses: Mapping[int, Any],
    request: Any = None,
    parameters: Sequence[Any] = (),
    description: str | Promise = "",
) -> Callable[[F], F]:
    """Describe one view method for drf-spectacular (a no-op without it).

    ``responses`` maps a status to a serializer (``None`` for no body), or to
    ``(serializer, description)``; an error status may map to a string, which
    documents the error body with that description (or ``ERRORS``' when empty).
    """
    if not SPECTACULAR_INSTALLED:
        return _identity

    from drf_spectacular.openapi import AutoSchema
    from drf_spectacular.utils import OpenApiResponse, extend_schema
    from rest_framework.settings import api_settings

    # Imported when used: settings modules import SCHEMA_SETTINGS, before models can be.
    from django_avaturn.api.serializers import ErrorSerializer

    def describe(status: int, value: Any) -> Any:
        if isinstance(value, (str, Promise)):
            return OpenApiResponse(ErrorSerializer, description=value or str(ERRORS[status]))
        if isinstance(value, tuple):
            serializer, text = value
            return OpenApiResponse(serializer, description=str(text))
        return value

    annotate = extend_schema(
        operation_id=operation_id,
        summary=summary,
        description=description or None,
        request=request,
        responses={status: describe(status, value) for status, value in responses.items()},
        parameters=list(parameters) or None,
        tags=[TAG],
    )
    # Typed as a dotted path; DRF's settings object has imported it by now.
    default: Any = api_settings.DEFAULT_SCHEMA_CLASS
    base = default if isinstance(default, type) and issubclass(default, AutoSchema) else AutoSchema

    def decorator(view_method: F) -> F:
        if "schema" not in getattr(view_method, "kwargs", {}):
            view_method.kwargs = {"schema": base}  # type: ignore[attr-defined]
        return annotate(view_method)

    return decorator


def session_id_parameter() -> list[Any]:
    """The ``{session_id}`` path parameter: one URL segment (Django's ``str`` converter)."""
    if not SPECTACULAR_INSTALLED:
        return []
    from drf_spectacular.utils import OpenApiParameter

    return [
        OpenApiParameter(
            "session_id",
            str,
            OpenApiParameter.PATH,
            required=True,
            pattern=r"^[^/]+$",
            description=str(_("The session's id, as `POST sessions/` answered it.")),
        )
    ]
