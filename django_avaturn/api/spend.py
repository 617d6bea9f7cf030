"""The spend-control endpoints: a user's own usage, and transcripts of their own sessions."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle

from django_avaturn.api.schema import document, session_id_parameter
from django_avaturn.api.serializers import StrictSerializer
from django_avaturn.api.throttling import TranscriptThrottle
from django_avaturn.api.views import UNAVAILABLE, AvaturnAPIView
from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import SessionNotLive
from django_avaturn.models import ACTIVE_STATUSES, Engine, Session, TranscriptRole
from django_avaturn.sessions import transcripts
from django_avaturn.spend import limits, usage
from django_avaturn.validation import QUOTA_WINDOWS

# Transcript events can arrive just after Stop; accept them for this long.
TRANSCRIPT_GRACE = timedelta(seconds=60)
USAGE_DAYS = 30


class QuotaSerializer(serializers.Serializer[Any]):
    sessions_per_day = serializers.IntegerField(allow_null=True, help_text=_("None: unlimited."))
    minutes_per_day = serializers.IntegerField(allow_null=True, help_text=_("None: unlimited."))


class DayUsageSerializer(serializers.Serializer[Any]):
    date = serializers.DateField()
    sessions = serializers.IntegerField(min_value=0, help_text=_("Started that day."))
    minutes = serializers.FloatField(
        min_value=0, help_text=_("Talked that day: a call across midnight is split.")
    )


class UsageSerializer(serializers.Serializer[Any]):
    """The answer of `GET usage/`: the caller's usage in the quota's window, and per day."""

    window = serializers.ChoiceField(choices=sorted(QUOTA_WINDOWS))
    window_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField()
    sessions = serializers.IntegerField(
        min_value=0, help_text=_("Started in this window (every start but a failed one).")
    )
    minutes = serializers.FloatField(
        min_value=0, help_text=_("Talked in this window, up to now: only its part of a call.")
    )
    quota = QuotaSerializer()
    days = DayUsageSerializer(
        many=True,
        help_text=_(
            "The last 30 days, oldest first; today's entry is the window's figures "
            'when the window is "day".'
        ),
    )


class UsageView(AvaturnAPIView):
    """`GET`: the caller's own usage: today's window against the quota, and the last 30 days."""

    @document(
        operation_id="avaturn_usage_retrieve",
        summary=_("The caller's own usage against their quota"),
        responses={200: UsageSerializer, 403: "", 503: UNAVAILABLE},
    )
    def get(self, request: Request) -> Response:
        if not request.user.is_authenticated:
            raise exceptions.NotAuthenticated()
        quota = limits.quota_for(request.user)
        # One clock for both, so a running session adds the same seconds to each.
        now = timezone.now()
        current = limits.usage_for(request.user, now=now)
        days = usage.daily_usage(Session.objects.for_user(request.user), days=USAGE_DAYS, now=now)
        body = {
            "window": avaturn_settings.QUOTA_WINDOW,
            "window_start": current.window_start.isoformat(),
            "resets_at": current.resets_at.isoformat(),
            "sessions": current.sessions,
            "minutes": round(current.seconds / 60, 1),
            "quota": {
                "sessions_per_day": quota.sessions_per_day,
                "minutes_per_day": quota.minutes_per_day,
            },
            "days": [
                {"date": day.day.isoformat(), "sessions": day.sessions, "minutes": day.minutes}
                for day in days
            ],
        }
        return Response(body)


class TranscriptSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=TranscriptRole.choices)
    text = serializers.CharField(max_length=100_000, trim_whitespace=True)
    timestamp = serializers.FloatField(required=False, min_value=0, max_value=4_102_444_800_000)

    def validate_text(self, value: str) -> str:
        limit = avaturn_settings.TRANSCRIPT_MAX_LENGTH
        if len(value) > limit:
            raise serializers.ValidationError(
                _("Ensure this field has no more than %(limit)d characters.") % {"limit": limit}
            )
        return value


class TranscriptsDisabled(exceptions.APIException):
    status_code = 404
    default_detail = _("Transcripts are not enabled on this site.")
    default_code = "transcripts_disabled"


class TranscriptFromEngine(exceptions.APIException):
    status_code = 409
    default_detail = _("The site engine records this session's transcript itself.")
    default_code = "transcript_from_engine"


class TranscriptCreatedSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()


class SessionTranscriptView(AvaturnAPIView):
    """`POST`: store one transcript line of the caller's own session (when enabled)."""

    def get_throttles(self) -> list[BaseThrottle]:
        # Not counted while transcripts are off: those requests store nothing.
        return [TranscriptThrottle()] if avaturn_settings.TRANSCRIPTS_ENABLED else []

    @document(
        operation_id="avaturn_sessions_transcripts_create",
        summary=_("Store one transcript line of the caller's own session"),
        description=_(
            "Only when `TRANSCRIPTS_ENABLED`; the session must be live or have "
            "ended in the last minute. At most `TRANSCRIPT_MAX_LINES` lines and "
            "`TRANSCRIPT_MAX_BYTES` bytes of text (UTF-8) per session, and "
            "`TRANSCRIPT_THROTTLE_RATE` lines per user."
        ),
        parameters=session_id_parameter(),
        request=TranscriptSerializer,
        responses={
            201: TranscriptCreatedSerializer,
            400: "",
            403: "",
            404: _(
                "`not_found`: not one of the caller's sessions, or none; "
                "`transcripts_disabled`: the site does not store transcripts."
            ),
            409: _(
                "`session_ended`: the session ended more than a minute ago; "
                "`transcript_from_engine`: the site engine records this session's lines."
            ),
            413: _(
                "`transcript_full`: the session already holds `TRANSCRIPT_MAX_LINES` lines, "
                "or this line would take it past `TRANSCRIPT_MAX_BYTES`; "
                "`request_too_large`: the body is larger than `DATA_UPLOAD_MAX_MEMORY_SIZE`."
            ),
            415: "",
            429: _(
                "`throttled`: more lines than `TRANSCRIPT_THROTTLE_RATE` allows; "
                "`Retry-After` says when to retry."
            ),
            503: UNAVAILABLE,
        },
    )
    def post(self, request: Request, session_id: str) -> Response:
        if not avaturn_settings.TRANSCRIPTS_ENABLED:
            raise TranscriptsDisabled()
        session = self.own_session(request, session_id)
        if session.engine == Engine.SITE:
            # Authoritative from the engine: a page may not add lines of its own.
            raise TranscriptFromEngine()
        recently_ended = session.ended_at is not None and (
            timezone.now() - session.ended_at <= TRANSCRIPT_GRACE
        )
        if session.status not in ACTIVE_STATUSES and not recently_ended:
            raise SessionNotLive()
        serializer = TranscriptSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        timestamp = serializer.validated_data.get("timestamp")
        line = transcripts.store_line(
            session,
            role=serializer.validated_data["role"],
            text=serializer.validated_data["text"],
            # The SDK's timestamps are milliseconds since the epoch.
            spoken_at=(
                datetime.fromtimestamp(timestamp / 1000, tz=dt_timezone.utc)
                if timestamp is not None
                else None
            ),
        )
        if line is None:  # the row went with its user meanwhile
            raise exceptions.NotFound()
        return Response({"id": line.pk}, status=201)
