"""The frames every process of the engine benchmark sends, stamped so a receiver can time them.

A frame is 20 ms of PCM16 mono at 24 kHz (960 bytes). Its first 24 bytes are
a stamp: the conversation, the frame's sequence number, and the sender's
``time.monotonic_ns()`` when it went out (CLOCK_MONOTONIC, one clock for every
process on the machine), then a magic number. The rest never changes, so a
sender builds a frame (or its base64) from a fixed tail and 24 new bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

FRAME_MS = 20
FRAME_BYTES = 960  # 20 ms of PCM16 at 24 kHz
FRAMES_PER_S = 1000 // FRAME_MS
STAMP = struct.Struct("<IIqQ")  # conversation, sequence, monotonic ns, magic
MAGIC = 0xA7A7_0BE7_C4A1_F00D
# The tail: a quiet 440 Hz tone, so the frame is plausible audio after the stamp.
_SAMPLES = (FRAME_BYTES - STAMP.size) // 2
TAIL = struct.pack(
    f"<{_SAMPLES}h", *(int(800 * math.sin(2 * math.pi * 440 * i / 24000)) for i in range(_SAMPLES))
)
# 24 and 936 are both multiples of 3: the stamp's base64 never mixes with the tail's.
TAIL_B64 = base64.b64encode(TAIL).decode()
STAMP_B64_CHARS = STAMP.size * 4 // 3
assert STAMP.size % 3 == 0
assert len(TAIL) % 3 == 0
assert STAMP.size + len(TAIL) == FRAME_BYTES


def frame(conversation: int, sequence: int) -> bytes:
    return STAMP.pack(conversation, sequence, time.monotonic_ns(), MAGIC) + TAIL


def frame_b64(conversation: int, sequence: int) -> str:
    stamp = STAMP.pack(conversation, sequence, time.monotonic_ns(), MAGIC)
    return base64.b64encode(stamp).decode() + TAIL_B64


def read_stamp(data: bytes) -> tuple[int, int, int] | None:
    """(conversation, sequence, sent ns) of a frame, or None if it does not start with a stamp."""
    if len(data) < STAMP.size:
        return None
    conversation, sequence, sent, magic = STAMP.unpack_from(data)
    return (conversation, sequence, sent) if magic == MAGIC else None


def read_stamp_b64(audio: str) -> tuple[int, int, int] | None:
    try:
        return read_stamp(base64.b64decode(audio[:STAMP_B64_CHARS]))
    except ValueError:
        return None


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50, p99 and max (milliseconds in, milliseconds out) and the count."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 3)}


def dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed, as uvicorn runs (``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
