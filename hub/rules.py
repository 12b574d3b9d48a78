"""The seam between the hub and an application: what a channel namespace decides.

The hub knows connections, channels, offsets and encodings; it knows nothing about workouts.
An `Application` (FitSync's lives in `channels/`) gives one `ChannelRule` per namespace, like a
Phoenix channel module: who may subscribe, whether and how a client publication is accepted,
and what happens after. The hub calls these rules and carries out what they return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

from starlette.routing import BaseRoute

from hub.broker.base import ClientInfo, HistoryOptions, StreamPosition
from hub.protocol.codes import ErrorCode, ReplyError


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated party behind a command: a connection, or the HTTP API (`client` "")."""

    user: str
    role: str
    device: str | None = None
    client: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class ChannelOptions:
    """Per-namespace behaviour the hub carries out; history makes the channel recoverable."""

    history: HistoryOptions | None = None
    presence: bool = False
    join_leave: bool = False


class HubAPI(Protocol):
    """What rules may ask of the hub: publish, and take subscriptions or connections away."""

    async def publish(
        self, channel: str, data: bytes, *, info: ClientInfo | None = None
    ) -> StreamPosition: ...

    async def unsubscribe_user(self, user: str, channel: str) -> None: ...

    def user_channels(self, user: str) -> set[str]: ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to `channel` on any node, by client id (presence channels only)."""
        ...

    async def disconnect_user(self, user: str) -> None: ...


class ChannelRule(ABC):
    """One channel namespace. Subclasses set `namespace` and `options`."""

    namespace: str
    options: ChannelOptions = ChannelOptions()

    @abstractmethod
    async def authorize_subscribe(self, who: Principal, channel_id: str) -> None:
        """Return to allow; raise ReplyError (103 and friends) to refuse."""

    async def publish(self, who: Principal, channel_id: str, data: bytes) -> bytes | None:
        """Handle a client publication; the default refuses, as most channels are server-fed.

        Return the payload to broadcast (it may be enriched), or None when it was accepted
        but must not be broadcast (an idempotent retry). Raise ReplyError to refuse.
        """
        raise ReplyError(ErrorCode.PERMISSION_DENIED)


class Application(ABC):
    """The product behind the hub: channel rules, RPC methods, and connect-time effects."""

    @abstractmethod
    def rule(self, namespace: str) -> ChannelRule | None: ...

    @abstractmethod
    async def on_connect(self, who: Principal) -> list[str]:
        """Called on every connect; returns channels the server subscribes the client to."""

    @abstractmethod
    async def rpc(self, who: Principal, method: str, data: bytes) -> bytes:
        """Run an RPC method; returns the result's raw JSON. ReplyError 104 if unknown."""

    async def start(self, hub: HubAPI) -> None:
        """Open what the application needs (database, writers) once the hub is up."""

    async def close(self) -> None: ...

    async def ready(self) -> None:
        """Raise when a dependency (the database) is unreachable; used by /readyz."""

    def routes(self) -> list[BaseRoute]:
        """HTTP API routes of the application, served under the hub's API key."""
        return []
