"""The life of every subscription on this node, from attach to detach, and nothing else.

A networked broker suspends at every call, so a subscription's steps (subscribe the node to the
broker channel, read the position, announce presence and join) interleave with other clients'
steps and with the client going away. `Lifecycle` is the one owner of those steps, and keeps
these guarantees:

- Per channel, the node's broker subscription is serialised: the first local subscriber
  subscribes the node, the last one leaving unsubscribes it, under one lock per channel. A
  subscriber is registered locally before the broker subscription is confirmed (its
  publications are parked until its reply is sent), and nobody reads a position before the
  node is subscribed, so no publication can fall between the two. After the last subscriber
  leaves, the node is unsubscribed even if a subscribe for the channel was still in flight.
- Detaching is synchronous and idempotent: delivery stops at once, the gauge is decremented
  once, and what was announced to other nodes is taken back exactly: a presence entry that
  was added is removed, a leave is sent only after a join. A client that goes away before its
  subscription was announced leaves no trace at all, as if it had never subscribed.
- Broker steps run in node-owned tasks, shielded from the client's cancellation, so a socket
  closing mid-call never leaves a half-done broker operation behind.
- Presence entries live as long as their subscriptions: the node refreshes all of them in one
  batched broker call every third of `presence_ttl`, so an entry expires only when its client
  or its whole node is gone. A retraction waits for a refresh in flight, so a refresh never
  resurrects an entry that was just removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from hub.broker.base import Broker
from hub.config import Settings
from hub.metrics import Metrics
from hub.registry import Registry, Subscription
from hub.rules import ChannelOptions

if TYPE_CHECKING:
    from hub.client import Client

log = logging.getLogger("hub.subscriptions")

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Lifecycle:
    def __init__(
        self, settings: Settings, broker: Broker, registry: Registry, metrics: Metrics,
        spawn: Spawn, *, unbound: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.registry = registry
        self.metrics = metrics
        self._spawn = spawn
        self._unbound = unbound
        """Told when the node is no longer subscribed to a channel."""
        self._bound: set[str] = set()
        """Channels the node is subscribed to at the broker."""
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        """Per-channel locks with their holder-and-waiter count, dropped when unused."""
        self._present: dict[Subscription, None] = {}
        """Subscriptions whose presence entry this node keeps alive."""
        self._refreshing: asyncio.Future[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()

    def bound_channels(self) -> set[str]:
        """Channels the node is subscribed to at the broker (a copy)."""
        return set(self._bound)

    # -- attaching -------------------------------------------------------------------------

    def begin(self, client: Client, channel: str) -> Subscription:
        """Register a new subscription locally: it parks publications from now on."""
        sub = Subscription(client, channel)
        client.subs[channel] = sub
        self.registry.add(sub)
        self.metrics.subscriptions.inc()
        return sub

    async def bind(self, channel: str) -> None:
        """Return once the node is subscribed to `channel` at the broker."""
        if channel in self._bound and channel not in self._locks:
            return  # subscribed, and no subscribe or unsubscribe of it under way
        await asyncio.shield(self._spawn(self._bind(channel)))

    async def _bind(self, channel: str) -> None:
        async with self._channel_lock(channel):
            if channel not in self._bound:
                await self.broker.subscribe(channel)
                self._bound.add(channel)

    async def _unbind(self, channel: str) -> None:
        async with self._channel_lock(channel):
            if channel in self._bound and self.registry.subscribers(channel) is None:
                # Forgotten first: should the call fail, the broker drops the channel anyway
                # (Broker.unsubscribe), and a later subscriber subscribes it again.
                self._bound.discard(channel)
                self._unbound(channel)
                await self.broker.unsubscribe(channel)

    @asynccontextmanager
    async def _channel_lock(self, channel: str) -> AsyncIterator[None]:
        entry = self._locks.get(channel)
        if entry is None:
            entry = self._locks[channel] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[channel]

    async def announce(self, sub: Subscription, options: ChannelOptions) -> None:
        """Add the presence entry and send the join, unless the client already went away."""
        if sub.detached or not (options.presence or options.join_leave):
            return
        sub.announced = self._spawn(self._announce(sub, options))
        await asyncio.shield(sub.announced)

    async def _announce(self, sub: Subscription, options: ChannelOptions) -> None:
        """Once it ends, `present` and `joined` say what there is to take back; the task is let
        go (a finished task and its context cost ~0.4 KB per idle subscription)."""
        info = sub.client.info()
        try:
            if options.presence:
                await self.broker.add_presence(sub.channel, info.client, info,
                                               self.settings.presence_ttl)
                sub.present = True
                if not sub.detached:
                    self._present[sub] = None
            if options.join_leave and not sub.detached:
                await self.broker.publish_join(sub.channel, info)
                sub.joined = True
        finally:
            sub.announced = None

    def release_parked(self, client: Client) -> None:
        """Right after a subscribe (or connect) reply: send what arrived while it was prepared.

        Publications the reply already carried, or that precede the position it gave, are
        skipped, so the client sees each publication once and in order.
        """
        writer = client.transport.writer
        for sub in client.subs.values():
            if sub.pending is None:
                continue
            parked, sub.pending = sub.pending, None
            for offset, out in parked:
                if offset == 0 or offset > sub.floor:
                    writer.send(out)

    # -- detaching -------------------------------------------------------------------------

    def detach(self, sub: Subscription) -> asyncio.Task[None] | None:
        """Stop delivering to `sub` at once; idempotent. Returns the task that takes back its
        presence and join, when there is something to take back."""
        if sub.detached:
            return None
        sub.detached = True
        client = sub.client
        if client.subs.get(sub.channel) is sub:
            del client.subs[sub.channel]
        if sub.expiry is not None:
            sub.expiry.cancel()
        sub.pending = None
        self.metrics.subscriptions.dec()
        self.registry.remove(sub)
        self._present.pop(sub, None)
        if self.registry.subscribers(sub.channel) is None:
            self._spawn(self._unbind(sub.channel))
        if sub.announced is None and not (sub.present or sub.joined):
            return None
        return self._spawn(self._retract(sub))

    async def _retract(self, sub: Subscription) -> None:
        if sub.announced is not None:
            await asyncio.wait([sub.announced])
        if self._refreshing is not None:
            await asyncio.wait([self._refreshing])
        info = sub.client.info()
        if sub.present:
            await self.broker.remove_presence(sub.channel, info.client)
        if sub.joined:
            await self.broker.publish_leave(sub.channel, info)

    # -- presence refresh ----------------------------------------------------------------------

    async def _refresh_forever(self) -> None:
        ttl = self.settings.presence_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            entries = [(s.channel, s.client.id, s.client.info()) for s in self._present]
            if not entries:
                continue
            self._refreshing = refreshing = asyncio.ensure_future(
                self.broker.refresh_presence(entries, ttl))
            try:
                await asyncio.wait([refreshing])
            finally:
                self._refreshing = None
            if not refreshing.cancelled() and refreshing.exception() is not None:
                self.metrics.presence_refresh_failures.inc()
                log.warning("presence refresh of %d entries failed: %s", len(entries),
                            refreshing.exception())
