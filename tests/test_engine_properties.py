"""Property: no interleaving of events puts audio outside a segment or opens two at once.

Hypothesis interleaves OpenAI's events (responses, audio deltas, late deltas of
finished or interrupted responses, speech_started, tool calls), Avaturn's
acknowledgements and playback reports, the clock, microphone frames and stop(); the
assertions read only what Avaturn's socket received.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from django_avaturn.engine.bridge import EndCause
from tests.engine_helpers import (
    SPEECH_STARTED,
    Running,
    SegmentChecker,
    audio_delta,
    audio_done,
    avaturn,
    function_call,
    pcm,
    response_created,
    response_done,
)
from tests.helpers import run_coroutine

REPORTS = ("created", "closed", "playback.started", "playback.ended", "playback.interrupted")

actions = st.one_of(
    st.just(("create",)),
    st.tuples(st.just("delta"), st.sampled_from(["a", "b"]), st.integers(1, 3)),
    st.tuples(st.just("late"), st.integers(0, 5)),
    st.just(("audio_done",)),
    st.just(("done",)),
    st.just(("speech",)),
    st.tuples(st.just("report"), st.sampled_from(REPORTS), st.integers(-1, 4)),
    st.just(("tool",)),
    st.tuples(st.just("tick"), st.floats(0, 3)),
    st.just(("mic",)),
    st.just(("stop",)),
)


# After stop() nothing reads OpenAI's socket: these steps are skipped.
FROM_OPENAI = frozenset({"create", "delta", "late", "audio_done", "done", "speech", "tool"})


def fill_of(number: int) -> int:
    return number % 250 + 1


async def play(steps: list[tuple[Any, ...]]) -> list[str]:  # noqa: C901 - one branch a step kind
    """Run the steps; the problems found in what Avaturn received (each chunk's fill byte
    names its response).
    """

    async def run_tool(call_id: str, name: str, arguments: str) -> str:
        await asyncio.sleep(0)
        return "{}"

    problems: list[str] = []
    async with Running(run_tool=run_tool) as r:
        checker = SegmentChecker()
        current: int | None = None
        count = 0
        past: list[int] = []
        silenced: set[int] = set()
        seen = 0
        stopped = False
        for step in steps:
            kind = step[0]
            if stopped and kind in {
                "create",
                "delta",
                "late",
                "audio_done",
                "done",
                "speech",
                "tool",
            }:
                continue
            if kind == "create" and current is None:
                count += 1
                current = count
                await r.realtime.push(response_created(f"r{current}"))
            elif kind == "delta" and current is not None:
                for _ in range(step[2]):
                    chunk = pcm(20, fill_of(current))
                    await r.realtime.push(audio_delta(f"r{current}", f"{current}{step[1]}", chunk))
            elif kind == "late" and past:
                old = past[step[1] % len(past)]
                await r.realtime.push(audio_delta(f"r{old}", f"{old}a", pcm(20, fill_of(old))))
            elif kind == "audio_done" and current is not None:
                await r.realtime.push(audio_done(f"r{current}", f"{current}a"))
            elif kind == "done" and current is not None:
                await r.realtime.push(response_done(f"r{current}"))
                silenced.add(fill_of(current))
                past.append(current)
                current = None
            elif kind == "speech":
                await r.realtime.push(SPEECH_STARTED)
                if current is not None:
                    # Its late audio must be dropped; OpenAI ends it with response.done.
                    silenced.add(fill_of(current))
                    await r.realtime.push(response_done(f"r{current}", "cancelled"))
                    past.append(current)
                    current = None
                silenced.update(fill_of(old) for old in past)
            elif kind == "tool":
                count += 1
                await r.realtime.push(function_call(f"call{count}", "t"))
            elif kind == "report":
                uids = checker.opened
                message: dict[str, Any] = {}
                if step[2] >= 0 and uids:
                    message["segment_uid"] = uids[step[2] % len(uids)]
                if step[1] == "playback.interrupted":
                    message["played_duration"] = 0.5
                await r.bridge.feed_message(avaturn(step[1], **message))
            elif kind == "tick":
                r.clock.now += step[1]
            elif kind == "mic":
                await r.bridge.feed_audio(pcm(20))
            elif kind == "stop":
                await r.bridge.stop()
                assert r.task is not None
                assert await asyncio.wait_for(r.task, 2) == EndCause.STOPPED
                stopped = True
            new = r.avaturn.sent[seen:]
            for item in new:
                if isinstance(item, bytes) and item[0] in silenced:
                    problems.append(f"{step}: audio of a finished or interrupted response")
            problems.extend(checker.check(new))
            seen = len(r.avaturn.sent)
    return problems


@settings(max_examples=300, deadline=None)
@given(st.lists(actions, max_size=40))
def test_no_interleaving_puts_audio_outside_a_segment_or_opens_two(
    steps: list[tuple[Any, ...]],
) -> None:
    assert run_coroutine(play(steps)) == []
