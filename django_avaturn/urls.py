"""Include with ``path("avaturn/", include("django_avaturn.urls"))``."""

from django.urls import path, re_path

from django_avaturn.api.engine import SessionMessageView
from django_avaturn.api.not_found import api_not_found
from django_avaturn.api.spend import SessionTranscriptView, UsageView
from django_avaturn.api.views import (
    SessionAbandonView,
    SessionDetailView,
    SessionHeartbeatView,
    SessionListView,
)
from django_avaturn.atomic_requests import non_atomic_everywhere

app_name = "django_avaturn"

# Never inside ATOMIC_REQUESTS (see atomic_requests).
urlpatterns = [
    path(
        "sessions/",
        non_atomic_everywhere(SessionListView.as_view()),
        name="session-list",
    ),
    # Before the detail route, which would take "abandon" for a session id
    # (Avaturn's ids are random; none is that word).
    path(
        "sessions/abandon/",
        non_atomic_everywhere(SessionAbandonView.as_view()),
        name="session-abandon",
    ),
    path(
        "sessions/<str:session_id>/",
        non_atomic_everywhere(SessionDetailView.as_view()),
        name="session-detail",
    ),
    path(
        "sessions/<str:session_id>/heartbeat/",
        non_atomic_everywhere(SessionHeartbeatView.as_view()),
        name="session-heartbeat",
    ),
    path(
        "sessions/<str:session_id>/transcripts/",
        non_atomic_everywhere(SessionTranscriptView.as_view()),
        name="session-transcripts",
    ),
    path(
        "sessions/<str:session_id>/messages/",
        non_atomic_everywhere(SessionMessageView.as_view()),
        name="session-messages",
    ),
    path("usage/", UsageView.as_view(), name="usage"),
    # Last: anything else under the API's own names is a JSON 404, not an
    # HTML page or an APPEND_SLASH redirect (see api.not_found).
    re_path(r"^(?:sessions|usage)(?:/.*)?$", api_not_found),
]
