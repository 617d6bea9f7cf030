"""The ``Session`` admin: a read-only record, plus termination for those allowed.

Every field is an upstream fact or our record of one, so nothing is editable
and nothing can be added. Rows of sessions that may still be running cannot
be deleted either: this table is the only record of them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import django
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ERROR_FLAG, PAGE_VAR
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.http.response import HttpResponseBase, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format, time_format
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_avaturn import services
from django_avaturn.admin import charts
from django_avaturn.admin.actions import (
    TERMINATE_PERMISSION,
    report_tally,
    staff_detail,
    terminate_selected,
)
from django_avaturn.admin.tool_calls import ToolCallInline
from django_avaturn.atomic_requests import non_atomic_everywhere
from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import AvaturnError, NotConfigured, UpstreamError
from django_avaturn.models import (
    EndReason,
    Engine,
    Session,
    SessionStatus,
    Transcript,
)
from django_avaturn.sessions.ending import end_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.spend import limits, usage
from django_avaturn.upstream.redaction import scrub

# Lines of a transcript on one admin page: the change page shows the first page.
TRANSCRIPT_PAGE_SIZE = 200
VIEW_TRANSCRIPT_PERMISSION = "django_avaturn.view_transcript"


def _transcript_lines(session: Session) -> QuerySet[Transcript]:
    """``session``'s lines in the order they were said, with only what a page shows."""
    return (
        Transcript.objects.filter(session=session)
        .only("created_at", "role", "text", "spoken_at")
        .order_by("created_at", "pk")
    )


_FIELDS = (
    "session_id",
    "user",
    "status",
    "end_reason",
    "scrubbed_end_detail",
    "awaiting_retry",
    "age_or_duration",
    "avatar_id",
    "engine",
    "model",
    "voice",
    "config_name",
    "max_duration",
    "created_at",
    "started_at",
    "expires_at",
    "last_seen_at",
    "ended_at",
    "updated_at",
    "client_ref",
    "transcript_lines",
    "transcript_bytes",
)


def _format_seconds(delta: timedelta) -> str:
    seconds = max(int(delta.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def _started_sessions(count: int) -> str:
    return ngettext("%(count)d started session", "%(count)d started sessions", count) % {
        "count": count
    }


if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Session]
else:  # ModelAdmin is generic only in the type stubs
    _ModelAdmin = admin.ModelAdmin


@admin.register(Session)
class SessionAdmin(_ModelAdmin):
    list_display = ("__str__", "user", "status", "age_or_duration", "end_reason", "created")
    list_filter = ("status", "end_reason", "engine", "created_at")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    ordering = ("-created_at", "-pk")
    fields = _FIELDS
    readonly_fields = _FIELDS
    actions = (terminate_selected,)
    change_form_template = "admin/django_avaturn/session/change_form.html"
    inlines = (ToolCallInline,)
    change_list_template = "admin/django_avaturn/session/change_list.html"

    def get_inlines(self, request: HttpRequest, obj: Session | None) -> list[Any]:
        # Tool calls: only the site engine makes them.
        if obj is not None and obj.engine == Engine.SITE:
            return [ToolCallInline]
        return []

    # ------------------------------------------------------------------ display

    @admin.display(description=gettext_lazy("age / duration"))
    def age_or_duration(self, obj: Session) -> str:
        """A running session's age; an ended one's duration."""
        if obj.is_active:
            return _("%(age)s old") % {"age": _format_seconds(timezone.now() - obj.created_at)}
        duration = obj.duration
        return _format_seconds(duration) if duration is not None else "—"

    @admin.display(
        description=Session._meta.get_field("created_at").verbose_name, ordering="created_at"
    )
    def created(self, obj: Session) -> str:
        """``created_at`` as the admin shows it, but free to wrap between date and time.

        The admin keeps a date-time column on one line (about 170px), which
        leaves the list too wide beside the filters in a 1100px window.
        """
        when = timezone.localtime(obj.created_at)
        return format_html(
            '<span class="nowrap">{}</span> <span class="nowrap">{}</span>',
            date_format(when, "DATE_FORMAT"),
            time_format(when, "TIME_FORMAT"),
        )

    @admin.display(description=gettext_lazy("end detail"))
    def scrubbed_end_detail(self, obj: Session) -> str:
        # Scrubbed when stored; scrubbed again here in case a key changed since.
        return scrub(obj.end_detail)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """The list for ``request``'s filters; a NUL in any of them is an invalid filter.

        No stored value holds one, and PostgreSQL cannot even compare one: the
        query would fail (a 500) where the admin redirects with ``?e=1`` for
        other filters it cannot apply (the list and the usage page both).
        """
        if any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in request.GET.lists()
        ):
            raise IncorrectLookupParameters("A filter value holds a NUL character.")
        return super().get_changelist_instance(request)

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        """Run an action, but only on a selection of primary keys: a forged one ends nothing.

        Django filters the rows by the posted ``_selected_action`` values as
        they come: one that is no primary key (``abc``, a NUL) raised from the
        query, a 500. Refused here, with a message, as an empty selection is.
        """
        pk = self.model._meta.pk
        assert pk is not None
        for value in request.POST.getlist(ACTION_CHECKBOX_NAME):
            try:
                if "\x00" in value:
                    raise ValidationError("A NUL character.")
                pk.to_python(value)
            except ValidationError:
                self.message_user(
                    request,
                    _("The selection is not valid; no sessions were changed."),
                    messages.WARNING,
                )
                return None
        # (Django 6 passes where the action form was, too.)
        return super().response_action(request, queryset, *args, **kwargs)

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        """The session id, and the user's login and email fields, whatever they are called."""
        user_model: Any = get_user_model()
        names = ["session_id"]
        for field in (user_model.USERNAME_FIELD, user_model.get_email_field_name()):
            try:
                user_model._meta.get_field(field)
            except FieldDoesNotExist:
                continue
            if f"user__{field}" not in names:
                names.append(f"user__{field}")
        return names

    # ------------------------------------------------------------------ permissions

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        # Deleting an active row here would forget a session that may still be
        # billing: terminate it first. Deleting its user elsewhere in the admin
        # is allowed: the user's deletion ends their sessions (``users``).
        if obj is not None and obj.is_active and self._serves(request):
            return False
        return super().has_delete_permission(request, obj)

    def _serves(self, request: HttpRequest) -> bool:
        """Whether ``request`` is for one of this admin's own views (or for none known)."""
        match = getattr(request, "resolver_match", None)
        if match is None:
            return True
        # ModelAdmin.get_urls() sets ``model_admin`` on each view it wraps
        # (undocumented, stable since Django 1.x); without it, assume ours and
        # protect the row.
        return getattr(match.func, "model_admin", self) is self

    def has_terminate_permission(self, request: HttpRequest, obj: Session | None = None) -> bool:
        return request.user.has_perm(TERMINATE_PERMISSION)

    # ------------------------------------------------------------------ the terminate button

    def get_urls(self) -> list[URLPattern]:
        # Termination talks to Avaturn: never inside ATOMIC_REQUESTS' transaction.
        @non_atomic_everywhere
        def view(request: HttpRequest, object_id: str) -> HttpResponseBase:
            return self.terminate_view(request, object_id)

        @non_atomic_everywhere
        def kill_switch(request: HttpRequest) -> HttpResponseBase:
            return self.kill_switch_view(request)

        return [
            path(
                "usage/",
                self.admin_site.admin_view(self.usage_view),
                name="django_avaturn_session_usage",
            ),
            path(
                "kill-switch/",
                self.admin_site.admin_view(kill_switch),
                name="django_avaturn_session_kill_switch",
            ),
            path(
                "<path:object_id>/terminate/",
                self.admin_site.admin_view(view),
                name="django_avaturn_session_terminate",
            ),
            path(
                "<path:object_id>/transcript/",
                self.admin_site.admin_view(self.transcript_view),
                name="django_avaturn_session_transcript",
            ),
            *super().get_urls(),
        ]

    # ------------------------------------------------------------------ usage and the kill switch

    def _setting_allows_sessions(self, request: HttpRequest) -> bool:
        """``SESSIONS_ENABLED``; a misconfigured setting says so on the changelist."""
        try:
            return bool(avaturn_settings.SESSIONS_ENABLED)
        except NotConfigured as exc:
            # The page that holds the kill switch must still open.
            self.message_user(request, str(exc), messages.ERROR)
            return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if isinstance(context, dict) and "cl" in context:
            summary = usage.summarize(context["cl"].queryset)
            # One read, where flips are written: the state beside its own reason.
            switch = limits.switch_row()
            context.update(
                usage_summary={
                    "sessions": summary.sessions,
                    "minutes": summary.minutes,
                    "live": summary.live,
                },
                usage_summary_text=_(
                    "Matching these filters: %(sessions)s, %(talked)s of conversation, %(live)s."
                )
                % {
                    "sessions": _started_sessions(summary.sessions),
                    "talked": usage.describe_duration(summary.seconds),
                    "live": ngettext("%(count)d live now", "%(count)d live now", summary.live)
                    % {"count": summary.live},
                },
                # Two things stop new sessions, each said apart: the switch, which this
                # page flips, and the SESSIONS_ENABLED setting, which it cannot.
                switch_stopped=switch is not None and not switch.sessions_enabled,
                setting_stopped=not self._setting_allows_sessions(request),
                switch=switch,
                can_use_kill_switch=self.has_terminate_permission(request),
            )
        return response

    def page_context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        """The context a page of ours needs to look like the admin's own pages."""
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            # Django 6.1's admin styles only breadcrumbs marked up as a list
            # (includes/breadcrumbs.html); 5.2 and 6.0 only the older <div>.
            "breadcrumbs_as_list": django.VERSION >= (6, 1),
        }

    def usage_view(self, request: HttpRequest) -> HttpResponseBase:
        """Minutes per day (a chart) and per user, for the changelist's current filters."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            filtered = self.get_changelist_instance(request).queryset
        except IncorrectLookupParameters:
            # As the changelist does with filters it cannot apply: a redirect, never a 500.
            changelist = reverse(f"{self.admin_site.name}:django_avaturn_session_changelist")
            return HttpResponseRedirect(f"{changelist}?{ERROR_FLAG}=1")
        # One clock for every figure, so a running session adds the same seconds to each.
        now = timezone.now()
        days = usage.daily_usage(filtered, days=30, now=now)
        bars, peak = charts.daily_bars(days)
        per_user = usage.usage_by_user(filtered, now=now)
        per_engine = usage.usage_by_engine(filtered, now=now)
        engines = dict(Engine.choices)
        for row in per_engine:
            row["label"] = engines.get(row["engine"], row["engine"])
            row["talked"] = usage.describe_duration(row["seconds"])
        summary = usage.summarize(filtered, now=now)
        user_model: Any = get_user_model()
        users = user_model._default_manager.in_bulk([row["user_id"] for row in per_user])
        for row in per_user:
            row["user"] = users.get(row["user_id"], row["user_id"])
            row["minutes"] = round(row["seconds"] / 60, 1)
            row["talked"] = usage.describe_duration(row["seconds"])
        context = {
            **self.page_context(request, _("Avatar usage")),
            "bars": bars,
            "peak": peak,
            "chart_width": charts.WIDTH,
            "chart_height": charts.HEIGHT,
            "per_user": per_user,
            "per_engine": per_engine,
            "total_minutes": summary.minutes,
            "total_sessions": summary.sessions,
            "summary_text": _("%(sessions)s, %(talked)s of conversation in the selection.")
            % {
                "sessions": _started_sessions(summary.sessions),
                "talked": usage.describe_duration(summary.seconds),
            },
            "peak_text": usage.describe_duration(max((day.seconds for day in days), default=0)),
        }
        return TemplateResponse(request, "admin/django_avaturn/session/usage.html", context)

    def kill_switch_view(self, request: HttpRequest) -> HttpResponseBase:
        """Stop new sessions and terminate every running one, or allow sessions again.

        Stopping takes two steps, as Django's delete action does: a GET, or
        the changelist's POST, shows a page saying how many sessions would be
        terminated, and changes nothing; only its POST with ``confirm=yes``
        stops them. Allowing sessions again is harmless and needs no page.
        """
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        if not self.has_terminate_permission(request):
            raise PermissionDenied
        changelist = reverse(f"{self.admin_site.name}:django_avaturn_session_changelist")
        if request.method == "POST" and request.POST.get("enable") == "1":
            limits.set_sessions_enabled(True, by=request.user)
            try:
                allowed_by_setting = bool(avaturn_settings.SESSIONS_ENABLED)
            except NotConfigured:
                allowed_by_setting = False
            if allowed_by_setting:
                self.message_user(request, _("New sessions are allowed again."), messages.SUCCESS)
            else:
                self.message_user(
                    request,
                    _(
                        "The kill switch no longer stops new sessions, but the "
                        "SESSIONS_ENABLED setting still does."
                    ),
                    messages.WARNING,
                )
            return HttpResponseRedirect(changelist)
        if request.method == "GET" or request.POST.get("confirm") != "yes":
            return self.kill_switch_confirmation(request)
        reason = request.POST.get("reason", "").strip()
        limits.set_sessions_enabled(False, by=request.user, reason=reason)
        self.message_user(
            request, _("New sessions are stopped. Terminating the running ones."), messages.WARNING
        )
        try:
            tally = end_sessions(
                Session.objects.active(), reason=EndReason.SHUTDOWN, detail=staff_detail(request)
            )
        except NotConfigured as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            report_tally(self, request, tally, when_none=_("No sessions were running."))
        return HttpResponseRedirect(changelist)

    def kill_switch_confirmation(self, request: HttpRequest) -> TemplateResponse:
        """The page that asks before the kill switch stops everything."""
        data = request.POST if request.method == "POST" else request.GET
        context = {
            **self.page_context(request, _("Are you sure?")),
            "running": Session.objects.filter(
                status__in=(SessionStatus.STARTING, SessionStatus.LIVE)
            ).count(),
            "reason": data.get("reason", "").strip(),
        }
        return TemplateResponse(
            request, "admin/django_avaturn/session/kill_switch_confirmation.html", context
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_terminate": self.has_terminate_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # ------------------------------------------------------------------ the transcript

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Session | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context["transcript"] = self._transcript_preview(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _may_read_transcripts(self, request: HttpRequest, obj: Session) -> bool:
        # What people said is more private than the session's record: its own permission.
        return self.has_view_permission(request, obj) and request.user.has_perm(
            VIEW_TRANSCRIPT_PERMISSION
        )

    def _transcript_preview(self, request: HttpRequest, obj: Session) -> dict[str, Any] | None:
        """The change page's transcript section: its first page of lines, or None for none.

        Two queries whatever the transcript's length (a count, a page). No
        section where the site stores no transcripts and none are left from
        when it did, nor for staff who may not read them.
        """
        if not self._may_read_transcripts(request, obj):
            return None
        try:
            enabled = avaturn_settings.TRANSCRIPTS_ENABLED
        except NotConfigured:
            enabled = False  # the check reports the setting; the page must still open
        lines = _transcript_lines(obj)
        total = lines.count()
        if not total and not enabled:
            return None
        return {
            "enabled": enabled,
            "total": total,
            "lines": list(lines[:TRANSCRIPT_PAGE_SIZE]),
            "url": reverse(
                f"{self.admin_site.name}:django_avaturn_session_transcript", args=(obj.pk,)
            ),
        }

    def transcript_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        """Every line of one session's transcript, a page at a time (``?p=``)."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(_("No such avatar session."))
        if not self._may_read_transcripts(request, obj):
            raise PermissionDenied
        page = Paginator(_transcript_lines(obj), TRANSCRIPT_PAGE_SIZE).get_page(
            request.GET.get(PAGE_VAR)
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": obj,
            "title": _("Transcript of %(session)s") % {"session": obj},
            "page": page,
            "page_range": page.paginator.get_elided_page_range(page.number),
            "page_var": PAGE_VAR,
        }
        return TemplateResponse(request, "admin/django_avaturn/session/transcript.html", context)

    def terminate_view(self, request: HttpRequest, object_id: str) -> HttpResponseBase:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_terminate_permission(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(_("No such avatar session."))
        try:
            outcome = services.end_session(
                obj, reason=EndReason.ADMIN, detail=staff_detail(request)
            )
        except UpstreamError as exc:
            self.message_user(
                request,
                _(
                    "Avaturn did not terminate the session; it stays ending and the expiry "
                    "command retries it: %(error)s"
                )
                % {"error": scrub(exc.describe())},
                messages.ERROR,
            )
        except AvaturnError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            text, level = {
                Outcome.TERMINATED: (_("Terminated the session."), messages.SUCCESS),
                Outcome.ALREADY_GONE: (
                    _("The session was already gone upstream; it is recorded as ended."),
                    messages.WARNING,
                ),
                Outcome.STOPPED: (
                    _(
                        "The session was still starting: its start is stopped and ends "
                        "what Avaturn creates."
                    ),
                    messages.SUCCESS,
                ),
                Outcome.SKIPPED: (
                    _(
                        "The session is already being ended; if that fails, it stays ending "
                        "and the expiry command retries it."
                    )
                    if obj.status == SessionStatus.ENDING
                    else _("The session had already ended."),
                    messages.INFO,
                ),
            }[outcome]
            self.message_user(request, text, level)
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:django_avaturn_session_change", args=(obj.pk,))
        )
