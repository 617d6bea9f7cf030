"""Shapes of the session API's requests and answers."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from django_avaturn.models import (
    CLIENT_REF_MAX_LENGTH,
    CLIENT_REF_MIN_LENGTH,
    CLIENT_REF_PATTERN,
    EndReason,
    Engine,
    Session,
)
from django_avaturn.sessions.plan import allowed_avatars


class StrictSerializer(serializers.Serializer[Any]):
    """A field the body does not declare is refused (a 400), never ignored.

    For a start, instructions, model, voice and engine are the server's to
    choose: a request naming them (or anything else unknown) is a 400. A
    text field refuses a number or a boolean too (`{"config": 5}` is a 400,
    not the config `"5"`).
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: [_("This field is not accepted.")] for name in unknown}
                )
            not_text = [
                name
                for name, field in self.fields.items()
                if isinstance(field, serializers.CharField)
                and data.get(name) is not None
                and not isinstance(data[name], str)
            ]
            if not_text:
                raise serializers.ValidationError(
                    {name: [_("Must be a string.")] for name in not_text}
                )
        return super().to_internal_value(data)


class ClientRefField(serializers.RegexField):
    """A start's client reference: short, URL-safe, and long enough not to repeat by chance."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            CLIENT_REF_PATTERN,
            min_length=CLIENT_REF_MIN_LENGTH,
            max_length=CLIENT_REF_MAX_LENGTH,
            **kwargs,
        )


class StartSessionSerializer(StrictSerializer):
    """What a visitor may choose when starting: an allowed avatar, a widget config name.

    And the start's own `client_ref`, to abandon it by before its answer arrives.
    """

    avatar_id = serializers.CharField(
        max_length=255, required=False, help_text=_("One of the site's allowed avatars.")
    )
    config = serializers.RegexField(
        r"^[A-Za-z0-9_.-]+$",
        max_length=100,
        required=False,
        help_text=_("A widget config name, handed to the site's session config hook."),
    )
    client_ref = ClientRefField(
        required=False,
        help_text=_(
            "A fresh random reference for this start (a UUID, say), so that "
            "`POST sessions/abandon/` can end it before its answer arrives."
        ),
    )

    def validate_avatar_id(self, value: str) -> str:
        # Refused with the body's other faults, before the start's throttle counts it.
        if value and value not in allowed_avatars():
            raise serializers.ValidationError(_("This avatar is not available."))
        return value


class AbandonStartSerializer(StrictSerializer):
    """Which of the caller's starts their page left."""

    client_ref = ClientRefField(help_text=_("The `client_ref` the start was sent with."))


class StartedSessionSerializer(serializers.Serializer[Any]):
    session_id = serializers.CharField()
    token = serializers.CharField(help_text=_("The per-session token for the browser SDK."))
    expires_at = serializers.DateTimeField(
        allow_null=True,
        help_text=_(
            "When the OpenAI client secret expires (openai-realtime); null for engines "
            "bounded by max_duration alone."
        ),
    )
    api_host = serializers.CharField(help_text=_("The SDK's apiHost."))
    engine = serializers.ChoiceField(
        choices=Engine.choices, help_text=_("The conversation engine the session talks with.")
    )


# The answer's one datetime, written as StartedSessionSerializer's field writes it.
# Unbound and without options, the field keeps no state: it reads DATETIME_FORMAT
# and the current time zone at each call.
_EXPIRES_AT = serializers.DateTimeField(allow_null=True)


def started_body(
    *, session_id: str | None, token: str, expires_at: Any, api_host: str, engine: str
) -> dict[str, Any]:
    """``StartedSessionSerializer(...).data`` for one start, without building a serializer.

    A serializer deep-copies its declared fields per instance (about 0.1 ms a
    start, most of writing this answer); the serializer stays the answer's
    description for the schema, and a test holds the two to the same output.
    """
    return {
        "session_id": _text(session_id),
        "token": _text(token),
        "expires_at": None if expires_at is None else _EXPIRES_AT.to_representation(expires_at),
        "api_host": _text(api_host),
        # As ChoiceField writes a choice: its value ("" and None as they are).
        "engine": engine if engine in ("", None) else _ENGINES.get(str(engine), engine),
    }


_ENGINES = {str(value): value for value in Engine.values}


def _text(value: Any) -> str | None:
    """As a serializer writes a CharField: None stays None, anything else its ``str``."""
    return None if value is None else str(value)


class SessionSerializer(serializers.ModelSerializer[Session]):
    """A session as its owner sees it: no token, no secret."""

    # Declared so the schema allows "" (not ended yet): a read-only model field's
    # enum would leave the blank out.
    end_reason = serializers.ChoiceField(
        choices=EndReason.choices,
        allow_blank=True,
        read_only=True,
        help_text=_("Why the session ended; empty while it has not."),
    )

    class Meta:
        model = Session
        fields = (
            "session_id",
            "status",
            "end_reason",
            "avatar_id",
            "created_at",
            "started_at",
            "expires_at",
            "last_seen_at",
            "ended_at",
        )
        read_only_fields = fields


class ErrorSerializer(serializers.Serializer[Any]):
    """Every error answer of the API: a stable `code` and a readable `detail`."""

    code = serializers.CharField(help_text=_("A stable, machine-readable error code."))
    detail = serializers.CharField(help_text=_("A readable message; never a key or a traceback."))
    # A field, not Serializer.errors: the metaclass moves declared fields out of the class.
    errors = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text=_("400 `invalid` only: each field's messages (`non_field_errors` for the body)."),
    )


class QuotaErrorSerializer(ErrorSerializer):
    """A 429: `throttled`, or `quota_exceeded` with the quota that ran out."""

    limit = serializers.ChoiceField(
        choices=["sessions_per_day", "minutes_per_day"],
        required=False,
        help_text=_("`quota_exceeded` only: the quota that is used up."),
    )
    allowed = serializers.IntegerField(
        required=False, help_text=_("`quota_exceeded` only: that quota's allowance.")
    )
    resets_at = serializers.DateTimeField(
        required=False, help_text=_("`quota_exceeded` only: when the window resets.")
    )
