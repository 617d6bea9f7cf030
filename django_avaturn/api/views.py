"""The session API: start, list, end and heartbeat the caller's own sessions.

Authentication, permission and throttle classes come from ``AVATURN`` at
request time (not in class bodies), so ``override_settings`` reaches them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.shortcuts import get_object_or_404
from django.utils.translation import gettext as _
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from django_avaturn import services
from django_avaturn.api.errors import exception_handler
from django_avaturn.api.serializers import (
    SessionSerializer,
    StartedSessionSerializer,
    StartSessionSerializer,
)
from django_avaturn.conf import avaturn_settings
from django_avaturn.models import EndReason, Session
from django_avaturn.session_config import AvatarNotAllowed

NO_STORE = {"Cache-Control": "no-store"}


class AvaturnAPIView(APIView):
    parser_classes = (JSONParser,)

    def get_authenticators(self) -> list[BaseAuthentication]:
        return [cls() for cls in avaturn_settings.AUTHENTICATION_CLASSES]

    def get_permissions(self) -> Sequence[BasePermission]:
        return [cls() for cls in avaturn_settings.PERMISSION_CLASSES]

    def get_throttles(self) -> list[BaseThrottle]:
        return []

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return exception_handler

    def own_session(self, request: Request, session_id: str) -> Session:
        """The caller's own session; anyone else's is indistinguishable from none (404)."""
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        return get_object_or_404(Session, session_id=session_id, user=request.user)


class SessionListView(AvaturnAPIView):
    """``GET``: the caller's own sessions, newest first. ``POST``: start one."""

    def get_throttles(self) -> list[BaseThrottle]:
        if self.request.method != "POST":
            return []
        return [cls() for cls in avaturn_settings.THROTTLE_CLASSES]

    def get(self, request: Request) -> Response:
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        limit = int(avaturn_settings.SESSION_LIST_LIMIT)
        sessions = Session.objects.for_user(request.user)[:limit]
        return Response(SessionSerializer(sessions, many=True).data, headers=NO_STORE)

    def post(self, request: Request) -> Response:
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        serializer = StartSessionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            started = services.start_session(
                request.user,
                request=request._request,
                avatar_id=serializer.validated_data.get("avatar_id"),
                config_name=serializer.validated_data.get("config", ""),
            )
        except AvatarNotAllowed as exc:
            raise exceptions.ValidationError(
                {"avatar_id": [_("This avatar is not available.")]}
            ) from exc
        body = StartedSessionSerializer(
            {
                "session_id": started.session.session_id,
                "token": started.token,
                "expires_at": started.expires_at,
                "api_host": started.api_host,
            }
        ).data
        return Response(body, status=201, headers=NO_STORE)


class SessionDetailView(AvaturnAPIView):
    """``GET``: one of the caller's sessions. ``DELETE``: end it (idempotent)."""

    def get(self, request: Request, session_id: str) -> Response:
        session = self.own_session(request, session_id)
        return Response(SessionSerializer(session).data, headers=NO_STORE)

    def delete(self, request: Request, session_id: str) -> Response:
        session = self.own_session(request, session_id)
        services.end_session(session, reason=EndReason.CLIENT)
        return Response(status=204, headers=NO_STORE)


class SessionHeartbeatView(AvaturnAPIView):
    """``POST``: the widget is still on the page; records ``last_seen_at``."""

    def post(self, request: Request, session_id: str) -> Response:
        session = self.own_session(request, session_id)
        services.record_heartbeat(session)
        return Response(status=204, headers=NO_STORE)
