"""Our own record of every Avaturn Live session.

Avaturn offers no endpoint to list sessions or read one's state, so this
table is the only place that knows which sessions may still be running (and
costing money). It never holds the Avaturn token, the OpenAI client secret
or any key.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.conf import settings
from django.db import models, router
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class SessionStatus(models.TextChoices):
    STARTING = "starting", _("Starting")
    LIVE = "live", _("Live")
    ENDING = "ending", _("Ending")
    ENDED = "ended", _("Ended")
    EXPIRED = "expired", _("Expired")
    FAILED = "failed", _("Failed")


# Statuses in which an upstream session may exist and cost money.
ACTIVE_STATUSES = (SessionStatus.STARTING, SessionStatus.LIVE, SessionStatus.ENDING)
FINAL_STATUSES = (SessionStatus.ENDED, SessionStatus.EXPIRED, SessionStatus.FAILED)

# A start's client reference: what the API accepts (a UUID's 36 characters fit).
CLIENT_REF_PATTERN = r"^[A-Za-z0-9_-]+$"
CLIENT_REF_MIN_LENGTH = 16
CLIENT_REF_MAX_LENGTH = 64


class EndReason(models.TextChoices):
    CLIENT = "client", _("Ended by the visitor's browser")
    USER = "user", _("User account deleted or deactivated")
    SIGNED_OUT = "signed_out", _("The user signed out")
    PASSWORD_CHANGED = "password_changed", _("The user's password changed")
    ADMIN = "admin", _("Terminated by staff")
    EXPIRED = "expired", _("Expired")
    REPLACED = "replaced", _("Replaced by a newer session")
    UPSTREAM_ERROR = "upstream_error", _("Upstream error")
    # The site's own part failed (its database, a hook, the site engine's code);
    # no upstream did anything wrong.
    SITE_ERROR = "site_error", _("The site's own error")
    # A start refused because a session of the user's it had to see ended
    # first did not end: nothing was created, and no upstream failed it.
    PREVIOUS_STILL_ENDING = "previous_still_ending", _("An earlier session was still ending")
    SHUTDOWN = "shutdown", _("Stopped by the kill switch")
    ABANDONED = "abandoned", _("The visitor's page left while it started")
    ENGINE_CLOSED = "engine_closed", _("Avaturn closed the site engine's socket")


class Engine(models.TextChoices):
    """Avaturn's conversation engines: what the avatar listens and speaks with."""

    OPENAI_REALTIME = "openai-realtime", _("OpenAI Realtime")
    CARTESIA = "cartesia", _("Cartesia Line agent")
    EXTERNAL = "external", _("External WebSocket engine")
    TEXT_ECHO = "text-echo", _("Text echo")
    # Avaturn's external engine pointed at this site: OpenAI Realtime bridged
    # by the site itself, which runs its own tools (django_avaturn.engine).
    SITE = "site", _("Site engine (OpenAI Realtime with the site's tools)")


class SessionQuerySet(models.QuerySet["Session"]):
    def primary(self) -> SessionQuerySet:
        """These rows as the database they are written to holds them, whatever the read router says.

        Every read that decides a status change, a cap or a quota is made so:
        a replica that the site's router reads from may lag, and inside a
        transaction it cannot see the transaction's own writes.
        """
        return self.using(router.db_for_write(self.model))

    def active(self) -> SessionQuerySet:
        """Sessions that may be running upstream (starting, live or ending)."""
        return self.filter(status__in=ACTIVE_STATUSES)

    def live(self) -> SessionQuerySet:
        return self.filter(status=SessionStatus.LIVE)

    def for_user(self, user: Any) -> SessionQuerySet:
        """``user`` is an instance of whatever ``AUTH_USER_MODEL`` is."""
        return self.filter(user_id=user.pk)


class Session(models.Model):
    """One Avaturn Live session, from the request that started it to its end."""

    session_id = models.CharField(
        _("Avaturn session id"),
        max_length=255,
        unique=True,
        null=True,
        blank=True,
        help_text=_("The id Avaturn gave the session; empty until Avaturn has created it."),
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="avaturn_sessions",
        verbose_name=_("user"),
        help_text=_("Who started the session."),
    )
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=SessionStatus.choices,
        default=SessionStatus.STARTING,
        help_text=_("Where the session is in its life."),
    )
    end_reason = models.CharField(
        _("end reason"),
        max_length=32,
        choices=EndReason.choices,
        blank=True,
        help_text=_("Why the session ended; set once, by whoever ended it."),
    )
    end_detail = models.CharField(
        _("end detail"),
        max_length=500,
        blank=True,
        help_text=_("More about the end: an upstream status and scrubbed excerpt, an idle time."),
    )
    avatar_id = models.CharField(
        _("avatar"), max_length=255, blank=True, help_text=_("The Avaturn avatar used.")
    )
    engine = models.CharField(
        _("engine"),
        max_length=20,
        choices=Engine.choices,
        default=Engine.OPENAI_REALTIME,
        help_text=_("The conversation engine the session talks with."),
    )
    model = models.CharField(
        _("model"), max_length=100, blank=True, help_text=_("The OpenAI Realtime model.")
    )
    voice = models.CharField(
        _("voice"), max_length=50, blank=True, help_text=_("The OpenAI Realtime voice.")
    )
    config_name = models.CharField(
        _("config name"),
        max_length=100,
        blank=True,
        help_text=_("The widget's config name passed to the session config hook, if any."),
    )
    client_ref = models.CharField(
        _("client reference"),
        max_length=CLIENT_REF_MAX_LENGTH,
        blank=True,
        help_text=_(
            "The reference the visitor's page gave its start, so that it can abandon the "
            "start before it knows the session id."
        ),
    )
    max_duration = models.PositiveIntegerField(
        _("max duration"),
        null=True,
        blank=True,
        help_text=_("The hard cap on the session's length Avaturn was given, in seconds."),
    )
    created_at = models.DateTimeField(
        _("created"), default=timezone.now, db_index=False, help_text=_("When the start began.")
    )
    started_at = models.DateTimeField(
        _("started"), null=True, blank=True, help_text=_("When Avaturn created the session.")
    )
    expires_at = models.DateTimeField(
        _("client secret expires"),
        null=True,
        blank=True,
        help_text=_("When the OpenAI client secret expires: an upper bound to record, not proof."),
    )
    last_seen_at = models.DateTimeField(
        _("last seen"),
        null=True,
        blank=True,
        help_text=_("The last heartbeat from the visitor's browser."),
    )
    ended_at = models.DateTimeField(
        _("ended"), null=True, blank=True, help_text=_("When the session ended.")
    )
    awaiting_retry = models.BooleanField(
        _("awaiting retry"),
        default=False,
        help_text=_(
            "Ending, its terminate failed and nobody is retrying it now: the expiry "
            "command's next run does."
        ),
    )
    # The site engine only: the hash of the per-session secret Avaturn sends on
    # the engine socket's upgrade, and when that socket was accepted (once).
    engine_secret_hash = models.CharField(
        _("engine secret hash"), max_length=128, blank=True, editable=False
    )
    # What the socket opens OpenAI Realtime with: {"realtime_session": the session
    # the start's plan resolved (hook included), "tools": the tool module paths}.
    # Written with the secret's hash, in one statement, before Avaturn is asked.
    engine_plan = models.JSONField(_("engine plan"), null=True, blank=True, editable=False)
    engine_connected_at = models.DateTimeField(
        _("engine connected"),
        null=True,
        blank=True,
        help_text=_("When Avaturn's engine socket reached the site (the site engine only)."),
    )
    updated_at = models.DateTimeField(_("updated"), auto_now=True)
    # Counted by the one conditional UPDATE that admits each line (see transcripts),
    # so concurrent posts cannot pass the caps; lines purged later stay counted.
    transcript_lines = models.PositiveIntegerField(
        _("transcript lines"),
        default=0,
        help_text=_("Transcript lines stored for this session (before any retention purge)."),
    )
    transcript_bytes = models.PositiveBigIntegerField(
        _("transcript bytes"),
        default=0,
        help_text=_("Their text's size in UTF-8 bytes."),
    )

    objects: ClassVar[SessionQuerySet] = SessionQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        verbose_name = _("avatar session")
        verbose_name_plural = _("avatar sessions")
        ordering = ("-created_at", "-pk")
        indexes = (
            # A user's active sessions: the cap check on every start.
            models.Index(fields=("user", "status"), name="avaturn_user_status_idx"),
            # A user's start by its client reference: abandoning it.
            models.Index(fields=("user", "client_ref"), name="avaturn_user_client_ref_idx"),
            # Active sessions by age: the expiry command.
            models.Index(
                fields=("created_at",),
                name="avaturn_active_age_idx",
                condition=Q(status__in=("starting", "live", "ending")),
            ),
        )
        permissions = (("terminate_session", _("Can terminate avatar sessions")),)

    def __str__(self) -> str:
        # No upstream id yet (or ever: a start that failed first).
        return self.session_id or f"({self.status} #{self.pk})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def duration(self) -> timedelta | None:
        """How long the session ran (or has run, if still live)."""
        if self.started_at is None:
            return None
        end: datetime = self.ended_at or timezone.now()
        return end - self.started_at


class ServiceSwitch(models.Model):
    """The kill switch: a single row that, when off, stops every new session at once.

    ``AVATURN["SESSIONS_ENABLED"] = False`` does the same from settings; a
    start needs both on. The row is read on every start (one primary-key
    lookup) so flipping it in the admin takes effect on the next request in
    every process.
    """

    SINGLETON_PK = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON_PK, editable=False)
    sessions_enabled = models.BooleanField(
        _("sessions enabled"),
        default=True,
        help_text=_("When off, no new session starts and staff are told why."),
    )
    reason = models.CharField(
        _("reason"), max_length=200, blank=True, help_text=_("Why sessions were stopped.")
    )
    changed_at = models.DateTimeField(_("changed"), default=timezone.now)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("changed by"),
    )

    class Meta:
        verbose_name = _("kill switch")
        verbose_name_plural = _("kill switch")

    def __str__(self) -> str:
        return str(_("Sessions enabled") if self.sessions_enabled else _("Sessions stopped"))


class TranscriptRole(models.TextChoices):
    USER = "user", _("Visitor")
    AVATAR = "avatar", _("Avatar")


class Transcript(models.Model):
    """One utterance of a conversation, stored only when ``TRANSCRIPTS_ENABLED``."""

    session = models.ForeignKey(
        Session,
        on_delete=models.CASCADE,
        related_name="transcripts",
        verbose_name=_("session"),
        help_text=_("Deleted with its session."),
    )
    role = models.CharField(_("speaker"), max_length=10, choices=TranscriptRole.choices)
    text = models.TextField(_("text"))
    spoken_at = models.DateTimeField(
        _("spoken"), null=True, blank=True, help_text=_("The SDK's timestamp, if it sent one.")
    )
    created_at = models.DateTimeField(_("received"), default=timezone.now)

    class Meta:
        verbose_name = _("transcript line")
        verbose_name_plural = _("transcript lines")
        ordering = ("created_at", "pk")
        indexes = (
            models.Index(fields=("session", "created_at"), name="avaturn_transcript_idx"),
            # The retention purge deletes by age across all sessions.
            models.Index(fields=("created_at",), name="avaturn_transcript_age_idx"),
        )

    def __str__(self) -> str:
        return f"{self.get_role_display()}: {self.text[:60]}"


class ToolCallStatus(models.TextChoices):
    OK = "ok", _("Answered")
    ERROR = "error", _("Refused by the tool (ToolError)")
    FAILED = "failed", _("Raised an exception")
    TIMEOUT = "timeout", _("Timed out")
    DENIED = "denied", _("Denied (user, session or permission)")
    INVALID = "invalid", _("Invalid arguments or unknown tool")
    # Cut off by its conversation's end (Stop, expiry, staff): no outcome.
    CANCELLED = "cancelled", _("Cut off: its conversation ended")


class ToolCall(models.Model):
    """One call of a site tool by the site engine's model, recorded as it ends."""

    session = models.ForeignKey(
        Session,
        on_delete=models.CASCADE,
        related_name="tool_calls",
        verbose_name=_("session"),
        help_text=_("Deleted with its session."),
    )
    call_id = models.CharField(_("call id"), max_length=100)
    tool = models.CharField(_("tool"), max_length=100)
    status = models.CharField(_("status"), max_length=10, choices=ToolCallStatus.choices)
    duration_ms = models.PositiveIntegerField(_("duration (ms)"))
    arguments = models.JSONField(
        _("arguments"),
        null=True,
        blank=True,
        help_text=_("Only when AVATURN['SITE_ENGINE']['RECORD_TOOL_ARGUMENTS'] is on."),
    )
    created_at = models.DateTimeField(_("called"), default=timezone.now)

    class Meta:
        verbose_name = _("tool call")
        verbose_name_plural = _("tool calls")
        ordering = ("created_at", "pk")
        indexes = (models.Index(fields=("session", "created_at"), name="avaturn_toolcall_idx"),)

    def __str__(self) -> str:
        return f"{self.tool} ({self.status})"


def sessions_database() -> str:
    """The alias sessions are written to: the site's write router's answer, ``default`` without one.

    Their transactions run there (a start's reservation and its locks, a
    bulk claim, a switch flip's lock, a transcript line), and what waits for
    their commit (``transaction.on_commit``) waits for that database's.
    """
    return router.db_for_write(Session)
