"""Local subscribers by channel: what the fan-out walks for every publication."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.client import Client
    from hub.writer import Outbound


class Subscription:
    """One client on one channel.

    While the subscribe reply is being prepared (history read for recovery), live publications
    are parked in `pending` so the client gets the reply first and then every later publication
    exactly once, in order (the reference server's pubSubSync).
    """

    __slots__ = ("channel", "client", "expiry", "floor", "pending")

    def __init__(self, client: Client, channel: str) -> None:
        self.client = client
        self.channel = channel
        self.pending: list[tuple[int, Outbound]] | None = []
        self.floor = 0
        """The offset the subscribe reply left the client at; parked publications above it go."""
        self.expiry: asyncio.TimerHandle | None = None


class Registry:
    def __init__(self) -> None:
        self._by_channel: dict[str, dict[Subscription, None]] = {}

    def add(self, sub: Subscription) -> bool:
        """Add; True when it is the channel's first local subscriber."""
        subs = self._by_channel.get(sub.channel)
        if subs is None:
            self._by_channel[sub.channel] = {sub: None}
            return True
        subs[sub] = None
        return False

    def remove(self, sub: Subscription) -> bool:
        """Remove; True when the channel has no local subscriber left."""
        subs = self._by_channel.get(sub.channel)
        if subs is None:
            return False
        subs.pop(sub, None)
        if subs:
            return False
        del self._by_channel[sub.channel]
        return True

    def subscribers(self, channel: str) -> dict[Subscription, None] | None:
        return self._by_channel.get(channel)

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_channel.values())
