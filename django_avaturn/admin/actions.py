"""Admin actions and the messages that report them.

Thin shells over ``sessions.ending.end_sessions()`` and ``end_session()``:
the admin decides who may act and what the person reads, nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from django_avaturn.exceptions import NotConfigured
from django_avaturn.models import EndReason, Session
from django_avaturn.sessions.ending import Tally, end_sessions
from django_avaturn.sessions.outcomes import Outcome
from django_avaturn.upstream.redaction import scrub

if TYPE_CHECKING:
    from django_avaturn.admin import SessionAdmin

TERMINATE_PERMISSION = "django_avaturn.terminate_session"


def staff_detail(request: HttpRequest) -> str:
    """Who ended it, for ``end_detail``: the staff user's username, and the key that outlives it."""
    user = request.user
    return f"by staff user {user.get_username()} (#{user.pk})"


@admin.action(permissions=["terminate"], description=gettext_lazy("Terminate selected sessions"))
def terminate_selected(
    modeladmin: SessionAdmin, request: HttpRequest, queryset: QuerySet[Session]
) -> None:
    try:
        tally = end_sessions(queryset, reason=EndReason.ADMIN, detail=staff_detail(request))
    except NotConfigured as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return
    report_tally(modeladmin, request, tally)


def report_tally(
    modeladmin: Any, request: HttpRequest, tally: Tally, *, when_none: str | None = None
) -> None:
    """One message per kind of outcome, so a failure is never hidden by a success.

    ``when_none``: what to say when there was nothing to end (by default, that
    no session was selected).
    """
    terminated = tally[Outcome.TERMINATED]
    gone = tally[Outcome.ALREADY_GONE]
    skipped = tally[Outcome.SKIPPED]
    stopped = tally[Outcome.STOPPED]
    ending = tally[Outcome.ALREADY_ENDING]
    if terminated:
        modeladmin.message_user(
            request,
            ngettext("Terminated %(count)d session.", "Terminated %(count)d sessions.", terminated)
            % {"count": terminated},
            messages.SUCCESS,
        )
    if gone:
        modeladmin.message_user(
            request,
            ngettext(
                "%(count)d session was already gone upstream; it is recorded as ended.",
                "%(count)d sessions were already gone upstream; they are recorded as ended.",
                gone,
            )
            % {"count": gone},
            messages.WARNING,
        )
    if stopped:
        modeladmin.message_user(
            request,
            ngettext(
                "%(count)d session was still starting: its start is stopped and ends what "
                "Avaturn created (if that fails, the expiry command retries it).",
                "%(count)d sessions were still starting: each start is stopped and ends what "
                "Avaturn created (if that fails, the expiry command retries it).",
                stopped,
            )
            % {"count": stopped},
            messages.SUCCESS,
        )
    if ending:
        modeladmin.message_user(
            request,
            ngettext(
                "%(count)d session was already being ended; if that fails, it stays ending "
                "and the expiry command retries it.",
                "%(count)d sessions were already being ended; if that fails, they stay ending "
                "and the expiry command retries them.",
                ending,
            )
            % {"count": ending},
            messages.INFO,
        )
    if skipped:
        modeladmin.message_user(
            request,
            ngettext(
                "%(count)d session had already ended; it was skipped.",
                "%(count)d sessions had already ended; they were skipped.",
                skipped,
            )
            % {"count": skipped},
            messages.INFO,
        )
    if tally.failed:
        text = ngettext(
            "%(count)d session could not be terminated; it stays ending and the expiry "
            "command retries it: %(errors)s",
            "%(count)d sessions could not be terminated; they stay ending and the expiry "
            "command retries them: %(errors)s",
            tally.failed,
        ) % {"count": tally.failed, "errors": "; ".join(tally.failures)}
        modeladmin.message_user(request, scrub(text), messages.ERROR)
    if not (terminated or gone or stopped or ending or skipped or tally.failed):
        nothing = when_none if when_none is not None else _("No sessions were selected.")
        modeladmin.message_user(request, nothing, messages.INFO)
