"""The memory broker behaving like a networked one: every call suspends, events arrive later.

The in-process broker never suspends, so each of its calls runs to completion before anything
else happens: that hides every race between a subscription's steps and a client going away.
This double yields to the event loop before and after every call (for `delay` seconds, so a
test can hold a window open), and hands events to the node from a queue of its own, in order,
after the call that caused them has returned, as a broker behind a socket does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from hub.broker.base import (
    BrokerEventHandler,
    ClientInfo,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
)
from hub.broker.memory import MemoryBroker


class _Deferred:
    """A BrokerEventHandler that queues events and hands them on from its own task."""

    def __init__(self, handler: BrokerEventHandler, delay: float) -> None:
        self.handler = handler
        self.delay = delay
        self._events: deque[Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def _later(self, event: Callable[[], None]) -> None:
        self._events.append(event)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.delay)
            while self._events:
                self._events.popleft()()

    def on_publication(self, channel: str, publication: Publication) -> None:
        self._later(lambda: self.handler.on_publication(channel, publication))

    def on_join(self, channel: str, info: ClientInfo) -> None:
        self._later(lambda: self.handler.on_join(channel, info))

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        self._later(lambda: self.handler.on_leave(channel, info))

    def on_control(self, data: bytes) -> None:
        self._later(lambda: self.handler.on_control(data))

    def on_resubscribed(self, channels: list[str]) -> None:
        self._later(lambda: self.handler.on_resubscribed(channels))


class YieldingMemoryBroker(MemoryBroker):
    """`slow` holds longer pauses for some calls (by name), to hold one race's window open."""

    def __init__(self, delay: float = 0.0, slow: dict[str, float] | None = None) -> None:
        super().__init__()
        self.delay = delay
        self.slow = slow or {}
        self.calls: list[str] = []
        """Names of the calls made, in order, for tests that check what the node asked."""
        self._deferred: _Deferred | None = None

    async def _pause(self, name: str) -> None:
        self.calls.append(name)
        await asyncio.sleep(self.slow.get(name, self.delay))

    async def start(self, handler: BrokerEventHandler) -> None:
        await self._pause("start")
        self._deferred = _Deferred(handler, self.delay)
        await super().start(self._deferred)

    async def close(self) -> None:
        await super().close()
        if self._deferred is not None:
            self._deferred.task.cancel()

    async def subscribe(self, channel: str) -> None:
        await self._pause("subscribe")
        await super().subscribe(channel)
        await asyncio.sleep(self.delay)

    async def unsubscribe(self, channel: str) -> None:
        await self._pause("unsubscribe")
        await super().unsubscribe(channel)
        await asyncio.sleep(self.delay)

    async def publish(self, channel: str, data: bytes, *, info: ClientInfo | None = None,
                      tags: dict[str, str] | None = None,
                      history: HistoryOptions | None = None) -> StreamPosition:
        await self._pause("publish")
        position = await super().publish(channel, data, info=info, tags=tags, history=history)
        await asyncio.sleep(self.delay)
        return position

    async def publish_control(self, data: bytes) -> None:
        await self._pause("publish_control")
        await super().publish_control(data)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        await self._pause("publish_join")
        await super().publish_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._pause("publish_leave")
        await super().publish_leave(channel, info)

    async def history(self, channel: str, **options: Any) -> HistoryResult:
        await self._pause("history")
        found = await super().history(channel, **options)
        await asyncio.sleep(self.delay)
        return found

    async def add_presence(self, channel: str, client_id: str, info: ClientInfo,
                           ttl: float) -> None:
        await self._pause("add_presence")
        await super().add_presence(channel, client_id, info, ttl)
        await asyncio.sleep(self.delay)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        await self._pause("remove_presence")
        await super().remove_presence(channel, client_id)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        await self._pause("presence")
        return await super().presence(channel)

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        await self._pause("presence_stats")
        return await super().presence_stats(channel)

    def subscribed_channels(self) -> set[str]:
        return set(self._subscribed)
