"""Local subscribers by channel: what the fan-out walks for every publication."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.client import Client
    from hub.writer import Outbound


class Subscription:
    """One client on one channel. Only `hub.subscriptions.Lifecycle` changes its state.

    While the subscribe reply is being prepared (history read for recovery), live publications
    are parked in `pending` so the client gets the reply first and then every later publication
    exactly once, in order (the reference server's pubSubSync).

    `present` and `joined` record what was announced to other nodes (a presence entry, a join),
    so that detaching takes back exactly that: never a leave without a join.
    """

    __slots__ = (
        "announced",
        "channel",
        "client",
        "detached",
        "expiry",
        "floor",
        "joined",
        "pending",
        "present",
    )

    def __init__(self, client: Client, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.pending: list[tuple[int, Outbound]] | None = []
        self.floor = 0
        """The offset the subscribe reply left the client at; parked publications above it go."""
        self.expiry: asyncio.TimerHandle | None = None
        self.detached = False
        self.present = False
        self.joined = False
        self.announced: asyncio.Task[None] | None = None
        """The task announcing presence and join to the broker, while it runs."""


class Registry:
    def __init__(self) -> None:
        self._by_channel: dict[str, dict[Subscription, None]] = {}

    def add(self, sub: Subscription) -> None:
        subs = self._by_channel.get(sub.channel)
        if subs is None:
            self._by_channel[sub.channel] = {sub: None}
        else:
            subs[sub] = None

    def remove(self, sub: Subscription) -> None:
        subs = self._by_channel.get(sub.channel)
        if subs is None:
            return
        subs.pop(sub, None)
        if not subs:
            del self._by_channel[sub.channel]

    def subscribers(self, channel: str) -> dict[Subscription, None] | None:
        return self._by_channel.get(channel)

    def channels(self) -> list[str]:
        return list(self._by_channel)
