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
- When `subscribe(channel)` returns, every publication accepted after that moment reaches this
  node (until `unsubscribe`). A networked broker may lose delivery while its connection is
  down; it then subscribes every channel again and calls `on_resubscribed` with them, and the
  node reads what it missed from history. Nothing stored is lost; only delivery is retried.
- A call that cannot reach the store raises `BrokerUnavailable`; a publish that raised it was
  not acknowledged to anyone, so the caller answers with a temporary error and the client
  retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class BrokerUnavailable(Exception):
    """The broker's store cannot be reached right now (connection refused, lost, timed out)."""


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
    epoch: str = ""
    """The stream's epoch when it was published; set by brokers that deliver over a network,
    so a node can tell a publication of a new stream (the store lost its history) from a late
    one of the old stream. Empty from the in-process broker, whose epoch cannot change under a
    running node."""


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

    def on_control(self, data: bytes) -> None:
        """A node-to-node control message (`Broker.publish_control`), this node's own included."""

    def on_resubscribed(self, channels: list[str]) -> None:
        """The broker's connection was lost and is back: `channels` are subscribed again, and
        publications accepted while it was down were not delivered here."""


PresenceEntry = tuple[str, str, ClientInfo]
"""(channel, client id, info): one client present in one channel."""


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
        """The last local subscriber left `channel`. The broker forgets the channel even when
        the call raises, so it is never subscribed again after a reconnect."""

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
    async def publish_control(self, data: bytes) -> None:
        """Deliver `data` to `on_control` of every node, this one included, once each.

        Control messages carry server-side actions for connections wherever they are
        (disconnect a user, unsubscribe a user from a channel). They are not stored: a node that
        is not connected to the broker when one is sent does not receive it.
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
    async def add_presence(
        self, channel: str, client_id: str, info: ClientInfo, ttl: float
    ) -> None:
        """Record (or refresh) a client in the channel's presence for `ttl` seconds."""

    async def refresh_presence(self, entries: Iterable[PresenceEntry], ttl: float) -> None:
        """Record or refresh many presence entries at once: a node refreshes all of its
        subscribers' entries in one call per interval (brokers over a network batch it into one
        round trip), rather than one timer per client."""
        for channel, client_id, info in entries:
            await self.add_presence(channel, client_id, info, ttl)

    @abstractmethod
    async def remove_presence(self, channel: str, client_id: str) -> None: ...

    @abstractmethod
    async def presence(self, channel: str) -> dict[str, ClientInfo]: ...

    @abstractmethod
    async def presence_stats(self, channel: str) -> tuple[int, int]:
        """(number of clients, number of distinct users) present in the channel."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the broker is unreachable; used by /readyz."""
