"""Deleting transcripts older than the site keeps them, in bounded batches."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from django_avaturn.conf import avaturn_settings
from django_avaturn.models import Transcript

DEFAULT_BATCH_SIZE = 5000


def retention_days(override: int | None = None) -> int | None:
    """Days to keep transcripts: the command's ``override``, else the setting (None: forever)."""
    if override is None:
        return avaturn_settings.TRANSCRIPT_RETENTION_DAYS
    days: int | None = avaturn_settings.validate("TRANSCRIPT_RETENTION_DAYS", override)
    return days


def purge_transcripts(
    *,
    older_than_days: int,
    now: datetime | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Delete transcript lines received more than ``older_than_days`` ago; return how many.

    Deletes one batch of primary keys per query, so a large backlog neither
    holds a long lock nor loads every row.
    """
    cutoff = (now or timezone.now()) - timedelta(days=older_than_days)
    old = Transcript.objects.filter(created_at__lt=cutoff)
    if dry_run:
        return old.count()
    deleted = 0
    while True:
        batch = list(old.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not batch:
            return deleted
        deleted += Transcript.objects.filter(pk__in=batch).delete()[0]
