"""Avaturn's speech segments as a pure state machine (no I/O, no clock of its own).

The rules it keeps:

* At most one segment is open at a time, and every audio byte goes inside one: the
  first audio of a response opens its segment (``audio`` answers ``OPEN``), the end
  of the response's audio closes it.
* A barge-in closes the open segment, interrupts Avaturn's playback when anything is
  open or still playing, and names each model item to truncate, with the milliseconds
  the visitor heard, clamped to what was generated (OpenAI refuses a truncation past
  the audio it made).
* Audio that arrives late for an interrupted or cancelled response is dropped.

What the visitor heard is estimated per segment, in this order:

1. Avaturn's ``playback.interrupted`` ``played_duration`` (seconds), or all of it after
   ``playback.ended``.
2. Our clock since Avaturn's ``playback.started`` reached us. Avaturn's own
   ``timestamp`` is not used as a start time: its clock and epoch are not documented
   (inferred), and the difference of two of our readings needs neither.
3. Once Avaturn has reported any playback in this conversation, a segment with no
   report yet has not started: nothing of it was heard (inferred from the order in
   which Avaturn plays its buffered segments).
4. Before Avaturn has reported any playback: our clock since the segment's first
   audio, as Avaturn's reference engine estimates it (its OpenAI Realtime service
   measures from the first audio it received), a segment starting no earlier than
   the one before it ends (segments play one after another).

Avaturn's playback reports are matched to segments by ``segment_uid``; a report
without one applies to the oldest unfinished segment (inferred: Avaturn plays
segments in the order they were created).
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from dataclasses import dataclass, field

from django_avaturn.engine import protocol

# What ``Segments.audio`` tells the bridge to do with one chunk of model audio.
DROP = 0  # outside any live response: never sent
FORWARD = 1  # inside the open segment
OPEN = 2  # send ``segment_create(current.uid)`` first, then the chunk
REOPEN = 3  # send ``segment_close(closed_uid)``, then as OPEN

# How many interrupted or cancelled responses are remembered to drop their late audio.
_DROPPED_MEMORY = 32
# A reported playback longer than this (a day) is taken as this.
_MAX_SECONDS = 86_400.0


@dataclass(eq=False)
class Segment:
    """One segment: the response and item its audio belongs to, and what became of it."""

    uid: str
    response_id: str
    item_id: str
    first_audio_at: float
    generated_bytes: int = 0
    closed: bool = False
    # Our clock when Avaturn's playback.started for it reached us.
    playback_started_at: float | None = None
    # Known once Avaturn reports the end of its playback (ended or interrupted).
    played_ms: int | None = None
    finished: bool = False

    @property
    def generated_ms(self) -> int:
        return self.generated_bytes // protocol.BYTES_PER_MS


@dataclass(frozen=True)
class Truncation:
    item_id: str
    audio_end_ms: int


@dataclass
class BargeIn:
    """What a barge-in sends: each list may be empty."""

    # Text frames for Avaturn, in order (close of the open segment, then the interrupt).
    to_avaturn: list[str] = field(default_factory=list)
    truncations: list[Truncation] = field(default_factory=list)


class Segments:
    """The segment state of one conversation. ``now`` arguments are the caller's clock."""

    def __init__(self) -> None:
        self.current: Segment | None = None
        # Segments Avaturn may still be playing (the open one included), oldest first.
        self.unfinished: deque[Segment] = deque()
        self._dropped: deque[str] = deque(maxlen=_DROPPED_MEMORY)
        self._reports_playback = False
        # The segment ``audio`` closed when it answered REOPEN.
        self.closed_uid = ""

    # Model audio.

    def audio(self, response_id: str, item_id: str, nbytes: int, now: float) -> int:
        """Account for one chunk of the model's audio: ``DROP``, ``FORWARD``, ``OPEN`` or
        ``REOPEN`` (send ``segment_close(closed_uid)`` first: the chunk starts a new item).
        """
        current = self.current
        if (
            current is not None
            and current.item_id == item_id
            and current.response_id == response_id
        ):
            current.generated_bytes += nbytes
            return FORWARD
        if response_id in self._dropped:
            return DROP
        if current is not None:
            # Another item (of this response or, should OpenAI ever overlap them, of
            # another one): its own segment, since a truncation names one item.
            self.closed_uid = current.uid
            self._close()
            self._open(response_id, item_id, nbytes, now)
            return REOPEN
        self._open(response_id, item_id, nbytes, now)
        return OPEN

    def _open(self, response_id: str, item_id: str, nbytes: int, now: float) -> None:
        segment = Segment(
            uid=uuid.uuid4().hex,
            response_id=response_id,
            item_id=item_id,
            first_audio_at=now,
            generated_bytes=nbytes,
        )
        self.current = segment
        self.unfinished.append(segment)

    def _close(self) -> str | None:
        current = self.current
        if current is None:
            return None
        current.closed = True
        self.current = None
        if current.finished:
            self.unfinished.remove(current)
        return protocol.segment_close(current.uid)

    def response_audio_done(self, response_id: str) -> str | None:
        """``response.output_audio.done``: the close, if the response's segment is open."""
        current = self.current
        if current is not None and current.response_id == response_id:
            return self._close()
        return None

    def response_done(self, response_id: str) -> str | None:
        """``response.done``: close its segment; any audio still to come for it is dropped."""
        self.drop_response(response_id)
        return self.response_audio_done(response_id)

    def drop_response(self, response_id: str) -> None:
        """Audio of this response arriving from now on is dropped (cancelled or interrupted)."""
        if response_id not in self._dropped:
            self._dropped.append(response_id)

    def is_dropped(self, response_id: str) -> bool:
        return response_id in self._dropped

    @property
    def speaking(self) -> bool:
        """A segment is open or Avaturn may still be playing one."""
        return bool(self.unfinished)

    # Barge-in.

    def barge_in(self, now: float) -> BargeIn:
        """The visitor started speaking: close, interrupt and truncate what is unheard."""
        result = BargeIn()
        if not self.unfinished:
            return result
        still_generating = self.current
        close = self._close()
        if close is not None:
            result.to_avaturn.append(close)
        result.to_avaturn.append(protocol.INTERRUPT)
        queue_free_at: float | None = None
        for segment in self.unfinished:
            self.drop_response(segment.response_id)
            played = self._played_ms(segment, now, queue_free_at)
            if not self._reports_playback:
                # Segments play one after another: the next starts when this one ends.
                start = segment.first_audio_at
                if queue_free_at is not None and queue_free_at > start:
                    start = queue_free_at
                queue_free_at = start + segment.generated_ms / 1000
            if played >= segment.generated_ms and segment is not still_generating:
                continue  # heard in full: nothing to cut
            # The open segment's item may hold more audio than reached us: it is cut even
            # when all that reached us was heard.
            result.truncations.append(Truncation(segment.item_id, played))
        self.unfinished.clear()
        return result

    def _played_ms(self, segment: Segment, now: float, queue_free_at: float | None = None) -> int:
        """What was heard of ``segment`` by ``now``, clamped to what was generated."""
        if segment.played_ms is not None:
            played = segment.played_ms
        elif segment.playback_started_at is not None:
            played = round((now - segment.playback_started_at) * 1000)
        elif self._reports_playback:
            played = 0
        else:
            start = segment.first_audio_at
            if queue_free_at is not None and queue_free_at > start:
                start = queue_free_at
            played = round((now - start) * 1000)
        return max(0, min(played, segment.generated_ms))

    # Avaturn's reports.

    def _find(self, segment_uid: object) -> Segment | None:
        if isinstance(segment_uid, str):
            for segment in self.unfinished:
                if segment.uid == segment_uid:
                    return segment
            return None
        return self.unfinished[0] if self.unfinished else None

    def playback_started(self, segment_uid: object, now: float) -> None:
        self._reports_playback = True
        segment = self._find(segment_uid)
        if segment is not None and segment.playback_started_at is None:
            segment.playback_started_at = now

    def playback_ended(self, segment_uid: object) -> None:
        self._reports_playback = True
        segment = self._find(segment_uid)
        if segment is not None:
            segment.played_ms = segment.generated_ms
            self._finish(segment)

    def playback_interrupted(
        self, segment_uid: object, played_duration: object, now: float
    ) -> Truncation | None:
        """Avaturn cut a segment's playback short: the model's item is cut to match.

        After our own barge-in the segment is already forgotten (its truncation went
        with the interrupt) and this returns None.
        """
        self._reports_playback = True
        segment = self._find(segment_uid)
        if segment is None:
            return None
        if (
            isinstance(played_duration, (int, float))
            and not isinstance(played_duration, bool)
            and math.isfinite(played_duration)
        ):
            # Seconds, as Avaturn's reference engine reads it (inferred: not documented).
            # Bounded by what was generated below, so a huge value cannot overflow.
            segment.played_ms = max(0, round(min(played_duration, _MAX_SECONDS) * 1000))
        played = self._played_ms(segment, now)
        self._finish(segment)
        if played >= segment.generated_ms:
            return None
        return Truncation(segment.item_id, played)

    def _finish(self, segment: Segment) -> None:
        # A segment still open leaves the queue when it is closed.
        segment.finished = True
        if segment.closed:
            self.unfinished.remove(segment)
