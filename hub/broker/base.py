"""The broker seam: everything a node needs from whatever connects it to the other nodes.

A node talks to its broker only through `Broker`, so the in-memory broker (one process) and the
Redis broker (many nodes) are interchangeable; one contract suite in tests/broker runs against
every implementation.

Guarantees every implementation keeps:
- Offsets are per channel, start at 1 and grow by exactly 1 per publication with history; the
  offset is assigned atomically with storing the publication, so two nodes never hand out the
  same one.
- The epoch names one incarnation of a channel's stream. It changes whenever the stream's history
  may have been lost (the stream expired, was removed, or the store restarted empty), so a client
  holding (offset, epoch) from the old stream can never be told it recovered when it did not.
- Publications are handed to `BrokerEventHandler.on_publication` in offset order per channel
  on every node subscribed to that channel, the publishing node included.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class ClientInfo:
    """Who published or joined: the protocol's ClientInfo. `*_info` fields are raw JSON."""

    user: str
    client: str
    conn_info: bytes | None = None
    chan_info: bytes | None = None


@dataclass(slots=True)
class Publication:
    """One message in a channel. `data` is the payload's raw JSON, serialised exactly once."""

    data: bytes
    offset: int = 0
    time: int = 0
    """Unix milliseconds when the broker accepted it."""
    info: ClientInfo | None = None
    tags: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StreamPosition:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much of a channel's stream to keep: at most `size` publications for `ttl` seconds.

    `meta_ttl` is how long the stream's offset and epoch outlive its last publication; after
    that the stream starts again from offset 1 under a new epoch.
    """

    size: int
    ttl: float
    meta_ttl: float = 86400.0


@dataclass(slots=True)
class HistoryResult:
    publications: list[Publication] = field(default_factory=list)
    position: StreamPosition = StreamPosition(0, "")


class BrokerEventHandler(Protocol):
    """What a node does with what its broker delivers; called on the event loop, must not block."""

    def on_publication(self, channel: str, publication: Publication) -> None: ...

    def on_join(self, channel: str, info: ClientInfo) -> None: ...

    def on_leave(self, channel: str, info: ClientInfo) -> None: ...


class Broker(ABC):
    """Fan-out between nodes, channel history with recovery, and presence."""

    @abstractmethod
    async def start(self, handler: BrokerEventHandler) -> None:
        """Connect and begin delivering events for subscribed channels to `handler`."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node has local subscribers on `channel`: deliver its events here."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """The last local subscriber left `channel`."""

    @abstractmethod
    async def publish(
        self,
        channel: str,
        data: bytes,
        *,
        info: ClientInfo | None = None,
        tags: dict[str, str] | None = None,
        history: HistoryOptions | None = None,
    ) -> StreamPosition:
        """Store (when `history` is given) and deliver a publication to every subscribed node.

        Returns the publication's position: its offset and the stream's epoch, or offset 0 when
        the channel keeps no history.
        """

    @abstractmethod
    async def publish_join(self, channel: str, info: ClientInfo) -> None: ...

    @abstractmethod
    async def publish_leave(self, channel: str, info: ClientInfo) -> None: ...

    @abstractmethod
    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int = 0,
        reverse: bool = False,
        meta_ttl: float = 86400.0,
    ) -> HistoryResult:
        """Publications after `since.offset` (or from the start), oldest first; with `reverse`,
        the ones before `since.offset` (or from the top), newest first: a client pages back
        through history by passing the oldest offset it has. As the reference server, a page
        back is empty when the publication just before `since` is no longer retained.

        `limit` 0 returns only the current position, -1 everything retained. The position is
        the stream's top: its last offset and current epoch. Asking for a channel with no stream
        creates one (a new epoch at offset 0), so the epoch a subscriber is given stays valid.
        """

    @abstractmethod
    async def remove_history(self, channel: str) -> None:
        """Forget the stream; the next publication starts a new epoch."""

    @abstractmethod
    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        """Record (or refresh) a client in the channel's presence for `ttl` seconds."""

    @abstractmethod
    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    @abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    @abstractmethod
    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users) present in the channel."""

    async def ping(self) -> None:
        """Raise if the broker is unreachable; used by /readyz."""
