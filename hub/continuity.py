"""Each channel's stream stays gapless on this node, whatever the broker's connection does.

A broker that delivers over a network (Redis) can miss publications: its connection drops and
comes back, or the store restarts empty. Every publication it delivers carries its offset and
its stream's epoch, so the node can tell, per channel:

- the next one (offset = last + 1, same epoch): delivered;
- one already delivered (offset <= last, same epoch): dropped and counted;
- a gap (offset > last + 1) or, after `on_resubscribed`, a possible gap: the node reads what it
  missed from history and delivers it, in order and without duplicates, parking live
  publications of that channel meanwhile;
- a new epoch, or a gap history no longer covers: the stream the subscribers hold positions in
  is gone, so they are disconnected with the protocol's insufficient-state code (3010); their
  SDK reconnects, asks to recover and is told `recovered: false`. Never a silent loss.

Publications from the in-process broker carry no epoch and pass straight through: it cannot
lose one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from hub.broker.base import BrokerUnavailable, HistoryResult, Publication, StreamPosition
from hub.metrics import Metrics

log = logging.getLogger("hub.continuity")

ReadHistory = Callable[[str, StreamPosition], Awaitable[HistoryResult]]
Deliver = Callable[[str, Publication], None]
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]

_READ_ATTEMPTS = 6
_READ_BACKOFF_CAP = 1.0


class Continuity:
    def __init__(
        self, metrics: Metrics, read_history: ReadHistory, deliver: Deliver,
        insufficient: Callable[[str], None], spawn: Spawn,
    ) -> None:
        self.metrics = metrics
        self._read_history = read_history
        self._deliver = deliver
        self._insufficient = insufficient
        self._spawn = spawn
        self._tops: dict[str, StreamPosition] = {}
        """The last position delivered per channel, for channels with local subscribers."""
        self._parked: dict[str, list[Publication]] = {}
        """Live publications of channels whose gap is being filled from history."""

    def accept(self, channel: str, publication: Publication) -> bool:
        """True when `publication` is the next one of its channel and may be delivered now."""
        parked = self._parked.get(channel)
        if parked is not None:
            parked.append(publication)
            return False
        top = self._tops.get(channel)
        if top is None or (publication.epoch == top.epoch
                           and publication.offset == top.offset + 1):
            self._tops[channel] = StreamPosition(publication.offset, publication.epoch)
            return True
        if publication.epoch == top.epoch and publication.offset <= top.offset:
            self.metrics.duplicates_dropped.inc()
            return False
        self._parked[channel] = [publication]
        self._spawn(self._fill(channel, top))
        return False

    def resubscribed(self, channels: list[str]) -> None:
        """The broker may have missed publications of `channels`: check each against history."""
        for channel in channels:
            top = self._tops.get(channel)
            if top is not None and channel not in self._parked:
                self._parked[channel] = []
                self._spawn(self._fill(channel, top))

    def forget(self, channel: str) -> None:
        """The channel has no local subscriber left."""
        self._tops.pop(channel, None)

    async def _fill(self, channel: str, since: StreamPosition) -> None:
        found = await self._read(channel, since)
        if found is None or not _continues(since, found):
            self.metrics.insufficient_state.inc()
            log.warning("channel %s: publications after offset %d (epoch %s) cannot be "
                        "recovered; its subscribers reconnect", channel, since.offset,
                        since.epoch)
            # Parked publications go with the subscribers they were for.
            self._parked.pop(channel, None)
            self._tops.pop(channel, None)
            self._insufficient(channel)
            return
        self.metrics.gap_filled.inc(len(found.publications))
        for publication in found.publications:
            self._deliver(channel, publication)
        self._tops[channel] = found.position
        for publication in self._parked.pop(channel, []):
            if self.accept(channel, publication):
                self._deliver(channel, publication)

    async def _read(self, channel: str, since: StreamPosition) -> HistoryResult | None:
        """History after `since`, retried with capped, jittered backoff while the broker is
        unreachable; None when it stays unreachable."""
        delay = 0.05
        for _ in range(_READ_ATTEMPTS):
            try:
                return await self._read_history(channel, since)
            except BrokerUnavailable as exc:
                log.info("channel %s: history not readable yet (%s)", channel, exc)
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, _READ_BACKOFF_CAP)
        return None


def _continues(since: StreamPosition, found: HistoryResult) -> bool:
    """History covers everything after `since` in the same stream."""
    top, pubs = found.position, found.publications
    if top.epoch != since.epoch:
        return False
    if not pubs:
        return top.offset == since.offset
    return pubs[0].offset == since.offset + 1 and pubs[-1].offset == top.offset
