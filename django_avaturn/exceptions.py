"""Errors raised by django_avaturn.

Each carries an API ``code`` and HTTP ``status_code``, so the views can turn
any of them into ``{"code", "detail"}`` without knowing where it came from.
Messages never contain a key: upstream bodies are kept as scrubbed excerpts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _


class AvaturnError(Exception):
    """Base class for every error this app raises on purpose."""

    code = "error"
    status_code = 500
    default_detail = _("The avatar service failed.")

    def __init__(self, detail: str | Promise | None = None) -> None:
        # A lazy message is translated here, in the language of the request raising it.
        self.detail = str(detail if detail is not None else self.default_detail)
        super().__init__(self.detail)

    def extra(self) -> dict[str, Any]:
        """Further fields of the API's error body (never anything secret)."""
        return {}

    def headers(self) -> dict[str, str]:
        """Further headers of the API's error answer."""
        return {}


class NotConfigured(AvaturnError, ImproperlyConfigured):
    """A key or setting is missing or invalid; nothing was sent upstream."""

    code = "not_configured"
    status_code = 503
    default_detail = _("The avatar service is not configured.")
    # For a key of a section (``AVATURN["CARTESIA"]["TOKEN_TTL"]``): that key and
    # what it accepts, which manage.py check's hint gives instead of the section's shape.
    key: str | None = None
    expects: str | None = None


class SessionLimitReached(AvaturnError):
    """The user already has as many live sessions as allowed (refuse policy)."""

    code = "session_limit_reached"
    status_code = 409
    default_detail = _("You already have the maximum number of live avatar sessions.")


class SessionNotLive(AvaturnError):
    """The session has ended (or never started), so it cannot be used."""

    code = "session_ended"
    status_code = 409
    default_detail = _("This avatar session has ended.")


class EngineIgnoresTasks(AvaturnError):
    """The session's engine does nothing with a task (Cartesia ignores them; the external
    engine's protocol has none), so ``say()`` refuses rather than pretend."""

    code = "engine_ignores_tasks"
    status_code = 409
    default_detail = _("This avatar's conversation engine cannot be told what to say.")


class UserNotActive(AvaturnError):
    """The user was deactivated (or deleted) after the request authenticated them.

    Answered as the API answers an inactive user's requests.
    """

    code = "not_authenticated"
    status_code = 403
    default_detail = _("Authentication credentials were not provided.")


class SessionReplaced(AvaturnError):
    """A newer start by the same user took this session's place while it started."""

    code = "session_replaced"
    status_code = 409
    default_detail = _("A newer avatar session replaced this one.")


class UpstreamError(AvaturnError):
    """An upstream (OpenAI or Avaturn) refused, failed, or answered nonsense."""

    code = "upstream_error"
    status_code = 502
    default_detail = _("The avatar service is unavailable. Please try again shortly.")

    # True when Avaturn's create may have started a session this error leaves
    # unnamed (no answer in time, a 5xx, an answer cut short before its id):
    # that session may run, and bill, until Avaturn's user-absent timeout.
    may_be_running = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        service: str,
        operation: str,
        upstream_status: int | None = None,
        body_excerpt: str = "",
    ) -> None:
        super().__init__(detail)
        self.service = service
        self.operation = operation
        self.upstream_status = upstream_status
        self.body_excerpt = body_excerpt

    def describe(self) -> str:
        """One line for logs and the admin: service, operation, status, scrubbed body."""
        status = self.upstream_status if self.upstream_status is not None else "no answer"
        text = f"{self.service} {self.operation} failed ({status})"
        if self.body_excerpt:
            text += f": {self.body_excerpt}"
        return text

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class UpstreamTimeout(UpstreamError):
    """An upstream did not answer in time; the outcome is unknown."""

    code = "upstream_timeout"
    status_code = 504
    default_detail = _("The avatar service took too long to answer. Please try again.")


class StorageUnavailable(AvaturnError):
    """The database failed; any upstream session was terminated before this was raised."""

    code = "unavailable"
    status_code = 503
    default_detail = _("The avatar service is temporarily unavailable. Please try again.")


class EngineTakesNoMessages(AvaturnError):
    """Only the site engine's sessions take messages from the page (``POST .../messages/``)."""

    code = "engine_takes_no_messages"
    status_code = 409
    default_detail = _("This avatar's conversation engine takes no messages.")


class MessageTooLarge(AvaturnError):
    """A page's message is larger than the engine passes on (``MESSAGE_MAX_BYTES``)."""

    code = "message_too_large"
    status_code = 413
    default_detail = _("This message is too large.")


class TranscriptFull(AvaturnError):
    """A line would take its session past ``TRANSCRIPT_MAX_LINES`` or ``TRANSCRIPT_MAX_BYTES``."""

    code = "transcript_full"
    status_code = 413
    default_detail = _("This session's transcript is full; no more lines are stored.")


class SessionsDisabled(AvaturnError):
    """The kill switch is off: no new session may start."""

    code = "sessions_disabled"
    status_code = 503
    default_detail = _("Avatar conversations are switched off at the moment.")


class SiteLimitReached(AvaturnError):
    """The site already runs ``MAX_LIVE_SESSIONS`` sessions."""

    code = "site_limit_reached"
    status_code = 503
    default_detail = _("All avatars are busy right now. Please try again in a minute.")
    retry_after = 60

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SessionStillEnding(AvaturnError):
    """A session of the user's that this start must see ended first did not end in time.

    Nothing was created for this start. The session may still run upstream:
    its terminate is slow, or failed and waits for the expiry command's retry.
    """

    code = "session_still_ending"
    status_code = 503
    default_detail = _("Your previous avatar session is still ending. Please try again shortly.")
    retry_after = 30

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class QuotaExceeded(AvaturnError):
    """One of the user's quotas is used up until ``resets_at``."""

    code = "quota_exceeded"
    status_code = 429

    def __init__(
        self, *, limit: str, allowed: int, resets_at: datetime, rolling: bool = False
    ) -> None:
        self.limit = limit
        self.allowed = allowed
        self.resets_at = resets_at
        if limit == "sessions_per_day":
            text = (
                _("You have used your %(allowed)s conversations of the last 24 hours.")
                if rolling
                else _("You have used your %(allowed)s conversations for today.")
            )
        else:
            text = (
                _("You have used your %(allowed)s minutes of conversation of the last 24 hours.")
                if rolling
                else _("You have used your %(allowed)s minutes of conversation for today.")
            )
        super().__init__(str(text) % {"allowed": allowed})

    def extra(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "allowed": self.allowed,
            "resets_at": self.resets_at.isoformat(),
        }

    def headers(self) -> dict[str, str]:
        from django.utils import timezone

        wait = max(1, int((self.resets_at - timezone.now()).total_seconds()))
        return {"Retry-After": str(wait)}
