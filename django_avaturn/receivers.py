"""Signal receivers connected in ``AvaturnConfig.ready()``.

Deleting a user cascades to their ``Session`` rows, our only record of what
may still be running (and billing) at Avaturn. So before the user goes, each
of their active sessions is terminated upstream (with the client's retries).

If Avaturn still cannot be reached, the deletion goes ahead anyway: account
deletion is often a legal duty, and blocking it on a vendor's outage is worse
than the bounded cost of a session that ends by itself (``max_duration``; at
most ``user_absent_timeout`` once the browser leaves). The failure is logged
at ERROR with the session id, so an operator can end it by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from django_avaturn.exceptions import AvaturnError
from django_avaturn.models import EndReason, Session, SessionStatus

logger = logging.getLogger(__name__)


def end_sessions_of_deleted_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``pre_delete`` of ``AUTH_USER_MODEL``: terminate the user's sessions upstream first."""
    if instance.pk is None:
        return
    _end_sessions_of(instance, action="Deleting")
    _terminate_pending_ends_of(instance)


def end_sessions_of_deactivated_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_save`` of ``AUTH_USER_MODEL``: an inactive user keeps no running session.

    Costs a query only when an inactive user is saved, never for active ones.
    """
    if getattr(instance, "is_active", True) or instance.pk is None:
        return
    _end_sessions_of(instance, action="Deactivating")


def _terminate_pending_ends_of(instance: Any) -> None:
    """Rows left ``ending`` for the expiry command to retry vanish with the user: try now."""
    from django_avaturn.clients import get_avaturn_client

    pending = Session.objects.filter(
        user_id=instance.pk, status=SessionStatus.ENDING, session_id__isnull=False
    ).values_list("session_id", flat=True)
    for session_id in pending:
        if session_id is None:  # (excluded by the query; for the type checker)
            continue
        try:
            get_avaturn_client().terminate_session(session_id)
        except AvaturnError as exc:
            logger.error(
                "Deleting user %s: could not terminate Avaturn session %s (%s). It keeps "
                "running until its max_duration or user_absent_timeout; end it by hand.",
                instance.pk,
                session_id,
                exc,
            )


def _end_sessions_of(instance: Any, *, action: str) -> None:
    from django_avaturn import services  # (services imports models, which need the app registry)

    sessions = Session.objects.filter(
        user_id=instance.pk, status__in=(SessionStatus.STARTING, SessionStatus.LIVE)
    )
    for session in sessions:
        try:
            services.end_session(session, reason=EndReason.USER)
        except AvaturnError as exc:
            logger.error(
                "%s user %s: could not terminate Avaturn session %s (%s). It keeps "
                "running until its max_duration or until the browser leaves; end it by hand.",
                action,
                instance.pk,
                session.session_id,
                exc,
            )
