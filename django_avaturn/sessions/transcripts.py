"""Storing transcript lines within each session's caps.

A session holds at most ``TRANSCRIPT_MAX_LINES`` lines and
``TRANSCRIPT_MAX_BYTES`` bytes of text, counted in UTF-8 (what the text
occupies on the wire and, in PostgreSQL, on disk). The counters live on the
session row, and one conditional ``UPDATE`` checks and raises them together,
in the transaction that inserts the line: concurrent posts queue on the
row's lock (PostgreSQL re-reads the counters it waited for; SQLite's write
lock serialises the transactions), so the caps hold however many arrive at
once. A refused line leaves the counters and the table as they were.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F

from django_avaturn.conf import avaturn_settings
from django_avaturn.exceptions import TranscriptFull
from django_avaturn.models import Session, Transcript, sessions_database


def utf8_size(text: str) -> int:
    """What ``text`` counts against ``TRANSCRIPT_MAX_BYTES``.

    The API refuses lone surrogates (DRF's text fields do), so every text it
    stores encodes.
    """
    return len(text.encode("utf-8"))


def store_line(
    session: Session, *, role: str, text: str, spoken_at: datetime | None
) -> Transcript | None:
    """Store one line of ``session``'s transcript, or raise ``TranscriptFull``.

    None if the session's row is gone (its user deleted meanwhile): nothing is stored.
    """
    max_lines = avaturn_settings.TRANSCRIPT_MAX_LINES
    max_bytes = avaturn_settings.TRANSCRIPT_MAX_BYTES
    size = utf8_size(text)
    with transaction.atomic(using=sessions_database()):
        # Not updated_at: it is the bulk claims' stamp (transitions.claim_rows), and a
        # line is no change of the session's state.
        admitted = Session.objects.filter(
            pk=session.pk,
            transcript_lines__lt=max_lines,
            transcript_bytes__lte=max_bytes - size,
        ).update(
            transcript_lines=F("transcript_lines") + 1,
            transcript_bytes=F("transcript_bytes") + size,
        )
        if not admitted:
            if not Session.objects.filter(pk=session.pk).exists():
                return None
            raise TranscriptFull()
        return Transcript.objects.create(session=session, role=role, text=text, spoken_at=spoken_at)
