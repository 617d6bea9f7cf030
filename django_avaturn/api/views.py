"""The session API: start, list, end, abandon and heartbeat the caller's own sessions.

Authentication, permission and throttle classes come from ``AVATURN`` at
request time (not in class bodies), so ``override_settings`` reaches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError
from django.http import Http404
from django.utils.translation import gettext_lazy
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from django_avaturn import services
from django_avaturn.api.errors import exception_handler
from django_avaturn.api.negotiation import SingleRendererNegotiation
from django_avaturn.api.parsers import JSONParser
from django_avaturn.api.renderers import AsciiJSONRenderer
from django_avaturn.api.schema import ERRORS, document, session_id_parameter
from django_avaturn.api.serializers import (
    AbandonStartSerializer,
    QuotaErrorSerializer,
    SessionSerializer,
    StartedSessionSerializer,
    StartSessionSerializer,
    started_body,
)
from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import AvaturnError, NotConfigured
from django_avaturn.logs import site_code_failed
from django_avaturn.models import EndReason, Session
from django_avaturn.sessions import ending, statements, transitions

SESSION_ID_MAX_LENGTH = Session._meta.get_field("session_id").max_length or 255
# What a 503 means where nothing is started: the database, or a missing setting.
UNAVAILABLE = gettext_lazy(
    "`unavailable`: the database failed; `not_configured`: a setting is invalid."
)


class _Misconfigured(BaseAuthentication):
    """Stands in for ``AUTHENTICATION_CLASSES`` that cannot be built, and raises when used."""

    def __init__(self, error: NotConfigured) -> None:
        self.error = error

    def authenticate(self, request: Request) -> None:
        raise self.error


@contextmanager
def _site_classes(setting: str) -> Iterator[None]:
    """Run the site's ``PERMISSION_CLASSES`` or ``THROTTLE_CLASSES``.

    What they raise to refuse (DRF's and Django's refusals, ours) goes on to the
    exception handler; anything else is the site's code failing, answered as a
    failing hook is (``503 not_configured``, its traceback logged), not with
    Django's 500 page.
    """
    try:
        yield
    except (
        exceptions.APIException,
        AvaturnError,
        DjangoPermissionDenied,
        Http404,
        DatabaseError,
    ):
        raise
    except Exception:
        raise site_code_failed(f"A class of AVATURN['{setting}']") from None


class AvaturnAPIView(APIView):
    parser_classes = (JSONParser,)
    # JSON whatever the site's DEFAULT_RENDERER_CLASSES: the API promises JSON
    # answers and errors, and DRF's browsable API would answer a browser's
    # Accept header with HTML pages.
    renderer_classes = (AsciiJSONRenderer,)
    content_negotiation_class = SingleRendererNegotiation

    def get_authenticators(self) -> list[BaseAuthentication]:
        try:
            return [cls() for cls in avaturn_settings.AUTHENTICATION_CLASSES]
        except NotConfigured as exc:
            # DRF builds authenticators before its exception handling begins:
            # raised here, this would be Django's HTML 500.
            return [_Misconfigured(exc)]

    def get_permissions(self) -> Sequence[BasePermission]:
        return [cls() for cls in avaturn_settings.PERMISSION_CLASSES]

    def get_throttles(self) -> list[BaseThrottle]:
        return []

    def check_permissions(self, request: Request) -> None:
        with _site_classes("PERMISSION_CLASSES"):
            super().check_permissions(request)

    def check_throttles(self, request: Request) -> None:
        with _site_classes("THROTTLE_CLASSES"):
            super().check_throttles(request)

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return exception_handler

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        # Every answer, OPTIONS and errors included: they are one user's
        # sessions and tokens, never for a shared cache.
        response["Cache-Control"] = "no-store"
        return response

    def own_session(self, request: Request, session_id: str) -> Session:
        """The caller's own session; anyone else's is indistinguishable from none (404)."""
        self.check_own_session_id(request, session_id)
        session = statements.own_row(session_id, request.user.pk)
        if session is None:
            raise exceptions.NotFound()
        return session

    def check_own_session_id(self, request: Request, session_id: str) -> None:
        """Refuse an anonymous caller, and an id no row can have (404), before any query."""
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        # No stored id is longer or holds a NUL (PostgreSQL cannot even compare
        # one, and would fail the query): such an id is simply not found.
        if len(session_id) > SESSION_ID_MAX_LENGTH or "\x00" in session_id:
            raise exceptions.NotFound()


class SessionListView(AvaturnAPIView):
    """`GET`: the caller's own sessions, newest first. `POST`: start one."""

    # Set by post() once the start's body is valid. DRF checks throttles
    # before the handler runs, when this is still false (and a GET never sets
    # it): a body refused as invalid starts nothing, so it spends none of the
    # start rate.
    _start_body_valid = False

    def get_throttles(self) -> list[BaseThrottle]:
        if not self._start_body_valid:
            return []
        return [cls() for cls in avaturn_settings.THROTTLE_CLASSES]

    @document(
        operation_id="avaturn_sessions_list",
        summary=gettext_lazy("The caller's own sessions, newest first"),
        responses={200: SessionSerializer(many=True), 403: "", 503: UNAVAILABLE},
    )
    def get(self, request: Request) -> Response:
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        limit = avaturn_settings.SESSION_LIST_LIMIT
        sessions = Session.objects.for_user(request.user)[:limit]
        return Response(SessionSerializer(sessions, many=True).data)

    @document(
        operation_id="avaturn_sessions_start",
        summary=gettext_lazy("Start a session"),
        description=gettext_lazy(
            "Creates the OpenAI Realtime session and the Avaturn session behind it, "
            "and answers the per-session token the browser SDK connects with."
        ),
        request=StartSessionSerializer,
        responses={
            201: StartedSessionSerializer,
            400: "",
            403: "",
            409: gettext_lazy(
                '`session_limit_reached`: at the cap with `ON_SESSION_LIMIT = "refuse"`; '
                "`session_replaced`: a newer start by the same user replaced this one; "
                "`session_ended`: staff ended it, or its `client_ref` was abandoned, "
                "while it started."
            ),
            413: "",
            415: "",
            429: (QuotaErrorSerializer, ERRORS[429]),
            502: "",
            503: "",
            504: "",
        },
    )
    def post(self, request: Request) -> Response:
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        serializer = StartSessionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self._start_body_valid = True
        self.check_throttles(request)
        # The serializer refused an avatar outside the allow-list already.
        started = services.start_session(
            request.user,
            request=request._request,
            avatar_id=serializer.validated_data.get("avatar_id"),
            config_name=serializer.validated_data.get("config", ""),
            client_ref=serializer.validated_data.get("client_ref", ""),
        )
        body = started_body(
            session_id=started.session.session_id,
            token=started.token,
            expires_at=started.expires_at,
            api_host=started.api_host,
            engine=started.session.engine,
        )
        return Response(body, status=201)


class SessionAbandonView(AvaturnAPIView):
    """`POST`: the caller's page left a start before its answer came; end what it starts."""

    @document(
        operation_id="avaturn_sessions_abandon",
        summary=gettext_lazy("Abandon one of the caller's starts by its client reference"),
        description=gettext_lazy(
            "For a page that leaves while its start is in flight, or whose start got no "
            "answer: it knows the `client_ref` it sent, not the session id. A start still "
            "starting ends as soon as Avaturn has created its session (the start answers "
            "409 `session_ended`); a live one ends now; one not reserved yet is refused "
            "when it is. Idempotent, and 204 whether or not such a start exists."
        ),
        request=AbandonStartSerializer,
        responses={
            204: None,
            400: "",
            403: "",
            413: "",
            415: "",
            502: "",
            503: UNAVAILABLE,
            504: "",
        },
    )
    def post(self, request: Request) -> Response:
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        serializer = AbandonStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.abandon_start(request.user, serializer.validated_data["client_ref"])
        return Response(status=204)


class SessionDetailView(AvaturnAPIView):
    """`GET`: one of the caller's sessions. `DELETE`: end it (idempotent)."""

    @document(
        operation_id="avaturn_sessions_retrieve",
        summary=gettext_lazy("One of the caller's sessions"),
        parameters=session_id_parameter(),
        responses={200: SessionSerializer, 403: "", 404: "", 503: UNAVAILABLE},
    )
    def get(self, request: Request, session_id: str) -> Response:
        session = self.own_session(request, session_id)
        return Response(SessionSerializer(session).data)

    @document(
        operation_id="avaturn_sessions_end",
        summary=gettext_lazy("End one of the caller's sessions (idempotent)"),
        parameters=session_id_parameter(),
        responses={204: None, 403: "", 404: "", 502: "", 503: UNAVAILABLE, 504: ""},
    )
    def delete(self, request: Request, session_id: str) -> Response:
        self.check_own_session_id(request, session_id)
        if ending.end_own_session(session_id, request.user.pk, reason=EndReason.CLIENT) is None:
            raise exceptions.NotFound()
        return Response(status=204)


class SessionHeartbeatView(AvaturnAPIView):
    """`POST`: the widget is still on the page; records ``last_seen_at``."""

    @document(
        operation_id="avaturn_sessions_heartbeat",
        summary=gettext_lazy("The widget is still on the page"),
        description=gettext_lazy(
            "Any body is ignored, but one that is there must be JSON: the CSRF check reads it."
        ),
        parameters=session_id_parameter(),
        request=dict,
        responses={
            204: None,
            400: gettext_lazy("`parse_error`: the body is not JSON."),
            403: "",
            404: "",
            409: gettext_lazy(
                "`session_ended`: the session has ended; `session_replaced`: a newer start "
                "by the same user replaced it."
            ),
            413: "",
            415: "",
            503: UNAVAILABLE,
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        self.check_own_session_id(request, session_id)
        if not transitions.record_heartbeat(session_id, request.user.pk):
            raise exceptions.NotFound()
        return Response(status=204)


Endpoint = tuple[Any, ...]


def only_avaturn_endpoints(endpoints: list[Endpoint], **kwargs: Any) -> list[Endpoint]:
    """drf-spectacular preprocessing hook: keep this app's endpoints, wherever they are included."""
    return [
        endpoint
        for endpoint in endpoints
        if isinstance(getattr(endpoint[3], "cls", None), type)
        and issubclass(endpoint[3].cls, AvaturnAPIView)
    ]
