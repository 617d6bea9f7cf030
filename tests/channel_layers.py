"""A channel layer for the engine socket's tests: Channels' in-memory one, whose group
joins can fail or run a hook before or after, whose discards can run a hook first, and
whose receives can lose a cancel (set on the class by the test, reset by it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import InMemoryChannelLayer


class HookedLayer(InMemoryChannelLayer):  # type: ignore[misc]  # Channels is untyped
    # Joins that fail (as a Redis layer does while Redis is unreachable), then succeed.
    failing_joins = 0
    # Awaited before each join that succeeds.
    before_join: Callable[[], Awaitable[None]] | None = None
    # Awaited after each join, once it took effect (the layer's answer slow to come back).
    after_join: Callable[[], Awaitable[None]] | None = None
    # Awaited before each discard (a layer slow to answer).
    before_discard: Callable[[], Awaitable[None]] | None = None
    # Cancels that receives lose, reading on instead: channels_redis does so, before
    # Python 3.12, when the cancel lands as a command's send to Redis completes.
    cancels_to_lose = 0

    async def group_add(self, group: str, channel: str) -> Any:
        if HookedLayer.failing_joins > 0:
            HookedLayer.failing_joins -= 1
            raise ConnectionError("the layer is unreachable")
        if HookedLayer.before_join is not None:
            await HookedLayer.before_join()
        joined = await super().group_add(group, channel)
        if HookedLayer.after_join is not None:
            await HookedLayer.after_join()
        return joined

    async def group_discard(self, group: str, channel: str) -> Any:
        if HookedLayer.before_discard is not None:
            await HookedLayer.before_discard()
        return await super().group_discard(group, channel)

    async def receive(self, channel: str) -> Any:
        while True:
            try:
                return await super().receive(channel)
            except asyncio.CancelledError:
                if HookedLayer.cancels_to_lose <= 0:
                    raise
                HookedLayer.cancels_to_lose -= 1
