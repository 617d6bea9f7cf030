"""The segment state machine on its own: no sockets, a clock given per call."""

from __future__ import annotations

import json

from django_avaturn.engine import protocol
from django_avaturn.engine.segments import DROP, FORWARD, OPEN, REOPEN, Segments, Truncation

MS = protocol.BYTES_PER_MS


def test_the_first_audio_of_a_response_opens_its_segment_and_the_rest_joins_it() -> None:
    segments = Segments()
    assert segments.audio("r1", "i1", 10 * MS, 0.0) == OPEN
    uid = segments.current.uid if segments.current else None
    assert segments.audio("r1", "i1", 10 * MS, 0.0) == FORWARD
    assert segments.current is not None and segments.current.uid == uid
    assert segments.current.generated_ms == 20
    close = segments.response_done("r1")
    assert close is not None and json.loads(close) == {
        "type": "avatar.speech.segment.close",
        "segment_uid": uid,
    }
    assert segments.current is None


def test_audio_after_its_response_is_done_is_dropped() -> None:
    segments = Segments()
    segments.audio("r1", "i1", MS, 0.0)
    segments.response_done("r1")
    assert segments.audio("r1", "i1", MS, 0.0) == DROP
    assert segments.current is None


def test_a_second_item_gets_its_own_segment() -> None:
    segments = Segments()
    segments.audio("r1", "i1", MS, 0.0)
    first = segments.current
    assert segments.audio("r1", "i2", MS, 0.0) == REOPEN
    assert first is not None and segments.closed_uid == first.uid and first.closed
    assert segments.current is not None and segments.current.item_id == "i2"


def test_barge_in_closes_interrupts_and_truncates_to_what_was_played() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 3000 * MS, 10.0)  # 3 s generated at once
    uid = segments.current.uid if segments.current else ""
    segments.playback_started(uid, 10.5)
    result = segments.barge_in(11.7)  # 1.2 s after playback started
    assert [json.loads(m)["type"] for m in result.to_avaturn] == [
        "avatar.speech.segment.close",
        "avatar.speech.interrupt",
    ]
    assert result.truncations == [Truncation("i1", 1200)]
    assert segments.audio("r1", "i1", MS, 11.8) == DROP
    assert not segments.speaking


def test_the_truncation_is_clamped_to_what_was_generated() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 500 * MS, 0.0)
    segments.playback_started(None, 0.1)
    # 5 s later the clock says far more than the 500 ms that reached us; the response
    # is still generating (its item may be longer): cut at what was generated.
    assert segments.barge_in(5.1).truncations == [Truncation("i1", 500)]


def test_a_finished_segment_heard_in_full_by_the_clock_is_not_cut() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 500 * MS, 0.0)
    segments.response_done("r1")
    segments.playback_started(None, 0.1)
    result = segments.barge_in(5.1)
    assert result.truncations == []
    assert result.to_avaturn == [protocol.INTERRUPT]


def test_played_duration_reported_by_avaturn_wins_over_the_clock() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 2000 * MS, 0.0)
    uid = segments.current.uid if segments.current else ""
    segments.response_done("r1")
    segments.playback_started(uid, 0.0)
    segments.audio("r2", "i2", 1000 * MS, 0.2)
    segments.response_done("r2")
    # Avaturn cut r1's playback at 750 ms (by the clock, 3 s had passed).
    assert segments.playback_interrupted(uid, 0.75, 3.0) == Truncation("i1", 750)
    # r2 never started playing.
    result = segments.barge_in(9.0)
    assert result.truncations == [Truncation("i2", 0)]
    assert result.to_avaturn == [protocol.INTERRUPT]


def test_without_playback_reports_the_clock_runs_from_the_first_audio() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 4000 * MS, 20.0)
    assert segments.barge_in(21.25).truncations == [Truncation("i1", 1250)]


def test_a_segment_played_to_its_end_is_neither_interrupted_nor_truncated() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 100 * MS, 0.0)
    uid = segments.current.uid if segments.current else ""
    segments.response_done("r1")
    segments.playback_started(uid, 0.0)
    segments.playback_ended(uid)
    assert not segments.speaking
    result = segments.barge_in(3.0)
    assert result.to_avaturn == [] and result.truncations == []


def test_barge_in_with_nothing_open_or_playing_sends_nothing() -> None:
    result = Segments().barge_in(0.0)
    assert result.to_avaturn == [] and result.truncations == []


def test_reports_for_unknown_segments_change_nothing() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 1000 * MS, 0.0)
    segments.playback_started("someone-else", 0.0)
    assert segments.playback_interrupted("someone-else", 0.1, 0.0) is None
    assert segments.speaking and segments.current is not None
    # Without a uid the report is the oldest segment's; no duration: the clock's estimate.
    segments.response_done("r1")
    assert segments.playback_interrupted(None, "not a number", 0.0) == Truncation("i1", 0)
    assert not segments.speaking


def test_without_playback_reports_queued_segments_play_one_after_another() -> None:
    segments = Segments()
    segments.audio("r1", "i1", 1000 * MS, 0.0)  # plays 0.0 - 1.0
    segments.response_done("r1")
    segments.audio("r2", "i2", 1000 * MS, 0.1)  # queued: plays 1.0 - 2.0
    segments.response_done("r2")
    segments.audio("r3", "i3", 500 * MS, 0.2)  # queued: plays 2.0 - 2.5
    result = segments.barge_in(1.4)
    # r1 was heard in full: not cut; r2 400 ms; r3 nothing yet.
    assert result.truncations == [Truncation("i2", 400), Truncation("i3", 0)]
