"""The page's messages to its own site engine conversation: ``POST sessions/<id>/messages/``."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from django_avaturn.api.schema import document, session_id_parameter
from django_avaturn.api.serializers import StrictSerializer
from django_avaturn.api.throttling import EngineMessageThrottle
from django_avaturn.api.views import AvaturnAPIView
from django_avaturn.engine import layer
from django_avaturn.exceptions import (
    EngineTakesNoMessages,
    MessageTooLarge,
    NotConfigured,
    SessionNotLive,
    StorageUnavailable,
)
from django_avaturn.logs import get_logger
from django_avaturn.models import Engine, SessionStatus
from django_avaturn.upstream.redaction import excerpt

logger = get_logger(__name__)


class EngineMessageSerializer(StrictSerializer):
    # The metaclass takes declared fields off the class: ``.data`` stays DRF's.
    data = serializers.DictField(  # type: ignore[assignment]
        help_text=_(
            "Any JSON object; at most 4000 bytes as compact JSON. The model receives it "
            "as the visitor's input from the page (not spoken)."
        )
    )
    respond = serializers.BooleanField(
        default=False,
        help_text=_("Whether the model answers it at once (otherwise it is context)."),
    )

    def validate_data(self, value: dict[str, Any]) -> dict[str, Any]:
        # What every channel layer carries (channels-redis packs with msgpack): a
        # value it refuses is the caller's error, not the layer failing.
        problem = _unpackable(value, depth=0)
        if problem:
            raise serializers.ValidationError(problem)
        return value


# Nesting a message may have; msgpack refuses past 511 levels.
MAX_DEPTH = 32
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


_NOT_TEXT = "A string holds a lone surrogate, which is not text."


def _is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8: JSON's ``"\\ud800"`` parses to a lone surrogate,
    which neither the size's measure nor the layer's msgpack can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unpackable(value: object, *, depth: int) -> str:
    """Why ``value`` cannot travel through the channel layer, or ''."""
    if depth > MAX_DEPTH:
        return f"Nested deeper than {MAX_DEPTH} levels."
    if isinstance(value, int) and not isinstance(value, bool):
        return "" if _INT_MIN <= value <= _INT_MAX else "An integer is out of range."
    if isinstance(value, str):
        return "" if _is_text(value) else _NOT_TEXT
    if isinstance(value, dict):
        if not all(_is_text(key) for key in value):  # JSON's keys are strings
            return _NOT_TEXT
        children: list[object] = list(value.values())
    elif isinstance(value, list):
        children = value
    else:
        return ""  # a float, a boolean or null
    for child in children:
        problem = _unpackable(child, depth=depth + 1)
        if problem:
            return problem
    return ""


class SessionMessageView(AvaturnAPIView):
    """`POST`: send a message to the caller's own live site engine conversation."""

    def get_throttles(self) -> list[BaseThrottle]:
        return [EngineMessageThrottle()]

    @document(
        operation_id="avaturn_sessions_messages_create",
        summary=_("Send a message to the caller's own live site engine conversation"),
        description=_(
            'Only for a live session of the site engine (`ENGINE = "site"`). Delivered '
            "through the channel layer to the process holding the conversation, which "
            "gives it to the model as the visitor's input from the page. At most "
            "`MESSAGE_THROTTLE_RATE` messages per user."
        ),
        parameters=session_id_parameter(),
        request=EngineMessageSerializer,
        responses={
            204: None,
            400: "",
            403: "",
            404: _("`not_found`: not one of the caller's sessions, or none."),
            409: _(
                "`session_ended`: the session is not live; `engine_takes_no_messages`: "
                "its engine is not the site engine."
            ),
            413: _("`message_too_large`: `data` is larger than 4000 bytes as JSON."),
            415: "",
            429: _("`throttled`: more messages than `MESSAGE_THROTTLE_RATE` allows."),
            503: _(
                "`not_configured`: no channel layer (`CHANNEL_LAYERS`); "
                "`unavailable`: the database or the channel layer failed."
            ),
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        session = self.own_session(request, session_id)
        if session.engine != Engine.SITE:
            raise EngineTakesNoMessages()
        if session.status != SessionStatus.LIVE:
            raise SessionNotLive()
        serializer = EngineMessageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data["data"]
        if layer.message_size(data) > layer.PAGE_MESSAGE_MAX_BYTES:
            raise MessageTooLarge()
        message = layer.page_message(data, respond=serializer.validated_data["respond"])
        try:
            layer.send_sync(session.pk, message)
        except layer.NoChannelLayer as exc:
            raise NotConfigured(str(exc)) from None
        except Exception as exc:
            # The layer's store (Redis) failed or is full: each backend raises its own.
            logger.warning(
                "Could not send session row %s its page's message: %s",
                session.pk,
                excerpt(repr(exc)),
            )
            raise StorageUnavailable() from None
        return Response(status=204)
