"""Every error of the session API as ``{"code", "detail"}``, never a traceback."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from django_avaturn.exceptions import AvaturnError, NotConfigured, StorageUnavailable
from django_avaturn.logs import get_logger

logger = get_logger(__name__)


def _body(code: str, detail: Any, errors: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "detail": str(detail)}
    if errors is not None:
        body["errors"] = errors
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if isinstance(exc, AvaturnError):
        if exc.status_code >= 500:
            # describe() of an UpstreamError carries the upstream status and a scrubbed excerpt.
            logger.warning("Session API answered %s: %s", exc.code, exc)
        # A visitor learns what kind of failure it was; operators read the specifics in logs.
        detail = exc.detail if exc.status_code < 500 else type(exc).default_detail
        headers.update(exc.headers())
        set_rollback()
        return Response(
            {**_body(exc.code, detail), **exc.extra()}, status=exc.status_code, headers=headers
        )
    if isinstance(exc, RequestDataTooBig):
        # Django would answer its own HTML 400; the API promises JSON, and 413 says why.
        set_rollback()
        return Response(
            _body("request_too_large", "The request body is too large."),
            status=413,
            headers=headers,
        )
    if isinstance(exc, ImproperlyConfigured):
        logger.error("django_avaturn is misconfigured: %s", exc)
        set_rollback()
        return Response(
            _body(NotConfigured.code, NotConfigured.default_detail),
            status=NotConfigured.status_code,
            headers=headers,
        )
    if isinstance(exc, DatabaseError):
        logger.exception("Database error in the session API")
        set_rollback()
        return Response(
            _body(StorageUnavailable.code, StorageUnavailable.default_detail),
            status=StorageUnavailable.status_code,
            headers=headers,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):  # a site's permission class may raise it
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.APIException):
        wait = getattr(exc, "wait", None)
        if isinstance(exc, exceptions.Throttled) and wait is not None:
            headers["Retry-After"] = str(int(wait))
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        if isinstance(exc, exceptions.ValidationError):
            body = _body("invalid", "The request is not valid.", exc.detail)
        else:
            codes = exc.get_codes()
            code = codes if isinstance(codes, str) else "error"
            body = _body(code, exc.detail)
        set_rollback()
        return Response(body, status=exc.status_code, headers=headers)
    return None


__all__ = ["exception_handler"]
