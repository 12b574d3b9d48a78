"""The in-process broker: one node, no network. It is the default and the test double.

Everything lives in this process and is lost when it exits; a restarted process starts every
stream under a fresh random epoch, so a client holding a position from before the restart is
told it did not recover.

No method awaits anything, so each one runs to completion on the event loop before another can
start: a publication's offset is assigned, stored and handed to the handler in one step. That is
what keeps offsets consecutive and delivery in offset order per channel without any lock.

Expiry costs nothing per publication: no timers. Expired publications, streams and presence
entries are dropped when their channel is next touched, and a sweep on every write reclaims
channels nobody touches any more, so memory stays bounded by the live streams (at most
`HistoryOptions.size` publications each) and the live presence entries.
"""

from __future__ import annotations

import heapq
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import TypeGuard

from hub.broker.base import (
    Broker,
    BrokerEventHandler,
    ClientInfo,
    HistoryOptions,
    HistoryResult,
    Publication,
    StreamPosition,
)


def _new_epoch() -> str:
    """A random name for a new stream incarnation; never reused, so old positions never match."""
    return secrets.token_urlsafe(6)


def _unix_ms() -> int:
    return time.time_ns() // 1_000_000


def _keeps_history(history: HistoryOptions | None) -> TypeGuard[HistoryOptions]:
    """A channel keeps history only with a positive size and ttl, as in the reference broker."""
    return history is not None and history.size > 0 and history.ttl > 0


class _Deadlines:
    """Channels to look at again once a moment passes, for reclaiming memory nobody reads.

    Holds at most one entry per channel, so it is never larger than the set of channels. The
    entry is only a reminder: whoever pops it checks the channel's real state and watches it
    again if it is still alive. An entry may fire later than the channel's actual expiry (when
    a channel was recreated with a shorter lifetime); that only delays reclaiming, since every
    read checks expiry itself.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._queued: set[str] = set()

    def watch(self, channel: str, deadline: float) -> None:
        if channel not in self._queued:
            self._queued.add(channel)
            heapq.heappush(self._heap, (deadline, channel))

    def due(self, now: float) -> list[str]:
        """Pop every channel whose deadline has passed; cheap when none has."""
        channels: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            _, channel = heapq.heappop(self._heap)
            self._queued.discard(channel)
            channels.append(channel)
        return channels


_Retained = tuple[
    float,
    int,
    int,
    bytes,
    str | None,
    str | None,
    bytes | None,
    bytes | None,
    tuple[str, ...] | None,
]
"""A retained publication, flat: (expiry, offset, time, data, the info's user, client,
conn_info and chan_info, tags as key, value, key, value…). Nothing in it is a container the
garbage collector tracks (tags aside, when there are any), so the first collection that sees
it stops tracking it. As `Publication` objects, the history of a busy node (200 sessions ×
1,000 publications in the ingest benchmark) had collections walk them again and again: one
took 138 ms, a pause for every connection, measured with `gc.callbacks`."""


def _retained(publication: Publication, expires_at: float) -> _Retained:
    info, tags = publication.info, publication.tags
    return (
        expires_at,
        publication.offset,
        publication.time,
        publication.data,
        *(
            (None, None, None, None)
            if info is None
            else (info.user, info.client, info.conn_info, info.chan_info)
        ),
        None if tags is None else tuple(chain.from_iterable(tags.items())),
    )


def _publication(entry: _Retained) -> Publication:
    _, offset, time_ms, data, user, client, conn_info, chan_info, tags = entry
    return Publication(
        data=data,
        offset=offset,
        time=time_ms,
        info=None
        if user is None or client is None
        else ClientInfo(user, client, conn_info, chan_info),
        tags=None if tags is None else dict(zip(tags[::2], tags[1::2], strict=True)),
    )


_NO_ENTRIES: deque[_Retained] = deque(maxlen=0)
"""The entries of every stream until its first publication; never appended to."""


@dataclass(slots=True)
class _Stream:
    """One incarnation of a channel's stream: its epoch, top offset and retained publications.

    Retained publications are always a contiguous run ending at `top`, so a reader can tell
    from the first offset whether anything between its position and the top was lost.
    """

    epoch: str
    meta_expires_at: float
    top: int = 0
    entries: deque[_Retained] = field(default_factory=lambda: _NO_ENTRIES)
    """(monotonic expiry, *the publication's fields*), oldest first. A channel nobody
    published to (every user channel, whose position a connect reads) shares one empty
    deque: an own empty deque is 600 bytes."""

    def extend_meta(self, deadline: float) -> None:
        """Keep offset and epoch at least until `deadline`; a shorter meta_ttl never cuts it."""
        self.meta_expires_at = max(self.meta_expires_at, deadline)

    def append(self, publication: Publication, history: HistoryOptions, now: float) -> None:
        """Give `publication` the next offset and retain it, dropping the oldest beyond size."""
        self.top += 1
        publication.offset = self.top
        if self.entries is _NO_ENTRIES:
            self.entries = deque()
        self.entries.append(_retained(publication, now + history.ttl))
        while len(self.entries) > history.size:
            self.entries.popleft()

    def drop_expired(self, now: float) -> None:
        """Drop expired publications from the oldest end.

        Only a prefix is ever dropped, so what remains stays contiguous. When a channel's ttl
        changes between publications, a publication may outlive its own ttl until the older
        ones behind it expire; it is never dropped early.
        """
        while self.entries and self.entries[0][0] <= now:
            self.entries.popleft()

    def after(self, offset: int) -> list[Publication]:
        """Retained publications with an offset greater than `offset`, oldest first."""
        first = self.top - len(self.entries) + 1
        skip = max(0, offset - first + 1)
        return [_publication(entry) for entry in islice(self.entries, skip, None)]

    def before(self, offset: int) -> list[Publication]:
        """Retained publications with an offset less than `offset`, oldest first; none when
        the one just below `offset` is not retained (paging back has nowhere to start)."""
        first = self.top - len(self.entries) + 1
        if not first <= offset - 1 <= self.top:
            return []
        return [_publication(entry) for entry in islice(self.entries, offset - first)]

    def position(self) -> StreamPosition:
        return StreamPosition(self.top, self.epoch)


_PresenceEntries = dict[str, tuple[ClientInfo, float]]
"""client id → (info, monotonic expiry)."""


class MemoryBroker(Broker):
    """Fan-out, history and presence for a hub that runs as a single process.

    Publications are handed to the handler synchronously inside `publish`, before it returns,
    and only for channels this node subscribed to. Streams and presence are lost on exit.
    Publications handed out, delivered or read from history, are the stored objects: callers
    treat them as read-only, which saves a copy per subscriber and per read.
    """

    def __init__(self) -> None:
        self._handler: BrokerEventHandler | None = None
        self._subscribed: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, _PresenceEntries] = {}
        self._stream_deadlines = _Deadlines()
        self._presence_deadlines = _Deadlines()

    async def start(self, handler: BrokerEventHandler) -> None:
        self._handler = handler

    async def close(self) -> None:
        """Stop delivering events. Streams and presence stay until the process exits."""
        self._handler = None
        self._subscribed.clear()

    async def ping(self) -> None:
        """Always reachable: it lives in this process."""

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition:
        """Store and deliver in one step; an exception from the handler reaches the caller
        after the publication is already stored."""
        now = time.monotonic()
        self._sweep(now)
        # History keeps the data for as long as its ttl: keep only its own bytes. orjson's
        # results hold their whole growth buffer (4 KB for a 300-byte event, measured), which
        # made retained history cost ~5 KB per publication.
        publication = Publication(
            data=bytes(memoryview(data)), time=_unix_ms(), info=info, tags=tags
        )
        if _keeps_history(history):
            stream = self._open_stream(channel, now, history.meta_ttl)
            stream.append(publication, history, now)
            position = stream.position()
        else:
            position = self._position_without_history(channel, now)
        handler = self._handler_for(channel)
        if handler is not None:
            handler.on_publication(channel, publication)
        return position

    async def publish_control(self, data: bytes) -> None:
        if self._handler is not None:
            self._handler.on_control(data)

    async def publish_join(self, channel: str, info: ClientInfo) -> None:
        handler = self._handler_for(channel)
        if handler is not None:
            handler.on_join(channel, info)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        handler = self._handler_for(channel)
        if handler is not None:
            handler.on_leave(channel, info)

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 86400.0,
    ) -> HistoryResult:
        """Reading a stream keeps its meta alive for `meta_ttl`, so the epoch a subscriber was
        just given does not expire under it while the channel is in use.

        `since.epoch` is not checked here: telling a stale epoch apart is the caller's job.
        """
        now = time.monotonic()
        self._sweep(now)
        stream = self._open_stream(channel, now, meta_ttl)
        if limit == 0:
            return HistoryResult([], stream.position())
        if not reverse:
            publications = stream.after(since.offset if since is not None else 0)
        else:
            publications = stream.before(since.offset if since is not None else stream.top + 1)
            publications.reverse()
        if limit > 0:
            del publications[limit:]
        return HistoryResult(publications, stream.position())

    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        now = time.monotonic()
        self._sweep(now)
        self._presence.setdefault(channel, {})[client_id] = (info, now + ttl)
        self._presence_deadlines.watch(channel, now + ttl)

    async def remove_presence(self, channel: str, client_id: str) -> None:
        entries = self._presence.get(channel)
        if entries is None:
            return
        entries.pop(client_id, None)
        if not entries:
            del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        entries = self._live_presence(channel, time.monotonic())
        return {client_id: info for client_id, (info, _) in entries.items()}

    async def presence_stats(self, channel: str) -> tuple[int, int]:
        entries = self._live_presence(channel, time.monotonic())
        users = {info.user for info, _ in entries.values()}
        return len(entries), len(users)

    def _handler_for(self, channel: str) -> BrokerEventHandler | None:
        """The handler, when events on `channel` are to be delivered on this node."""
        return self._handler if channel in self._subscribed else None

    def _position_without_history(self, channel: str, now: float) -> StreamPosition:
        """Offset 0, with the epoch of the channel's stream if one exists (untouched)."""
        stream = self._live_stream(channel, now)
        return StreamPosition(0, stream.epoch if stream is not None else "")

    def _live_stream(self, channel: str, now: float) -> _Stream | None:
        """The channel's stream with expired publications dropped, or None once its meta
        expired (the stream is then forgotten, so the next one gets a new epoch)."""
        stream = self._streams.get(channel)
        if stream is None:
            return None
        if stream.meta_expires_at <= now:
            del self._streams[channel]
            return None
        stream.drop_expired(now)
        return stream

    def _open_stream(self, channel: str, now: float, meta_ttl: float) -> _Stream:
        """The live stream, or a new one at offset 0 under a new epoch; either way its meta is
        kept for at least `meta_ttl` from now."""
        stream = self._live_stream(channel, now)
        if stream is None:
            stream = _Stream(epoch=_new_epoch(), meta_expires_at=now + meta_ttl)
            self._streams[channel] = stream
        else:
            stream.extend_meta(now + meta_ttl)
        self._stream_deadlines.watch(channel, stream.meta_expires_at)
        return stream

    def _live_presence(self, channel: str, now: float) -> _PresenceEntries:
        """The channel's unexpired presence; expired entries and empty channels are dropped."""
        entries = self._presence.get(channel)
        if entries is None:
            return {}
        for client_id in [cid for cid, (_, expires) in entries.items() if expires <= now]:
            del entries[client_id]
        if not entries:
            del self._presence[channel]
        return entries

    def _sweep(self, now: float) -> None:
        """Reclaim streams and presence of channels whose deadline passed; re-watch survivors."""
        for channel in self._stream_deadlines.due(now):
            stream = self._live_stream(channel, now)
            if stream is not None:
                self._stream_deadlines.watch(channel, stream.meta_expires_at)
        for channel in self._presence_deadlines.due(now):
            entries = self._live_presence(channel, now)
            if entries:
                latest = max(expires for _, expires in entries.values())
                self._presence_deadlines.watch(channel, latest)
