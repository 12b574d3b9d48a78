"""The seam between the hub and an application: what a channel namespace decides.

The hub knows connections, channels, offsets and encodings; it knows nothing about workouts.
An `Application` (FitSync's lives in `channels/`) gives one `ChannelRule` per namespace, like a
Phoenix channel module: who may subscribe, whether and how a client publication is accepted,
and what happens after. The hub calls these rules and carries out what they return.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.routing import BaseRoute

from hub.broker.base import ClientInfo, HistoryOptions, HistoryResult, StreamPosition
from hub.metrics import Metrics
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

    metrics: Metrics
    """The node's Prometheus metrics, where the application's own parts report too."""

    async def publish(
        self, channel: str, data: bytes, *, info: ClientInfo | None = None
    ) -> StreamPosition: ...

    async def retained(
        self, channel: str, *, before: int | None = None, limit: int
    ) -> HistoryResult:
        """At most `limit` of the publications `channel` retains, newest first: the newest,
        or those before offset `before`; with the stream's position (channels with history)."""
        ...

    async def recheck_subscriptions(self, user: str) -> None:
        """Re-authorize the user's subscriptions on every node; end the ones now refused."""
        ...

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to `channel` on any node, by client id (presence channels only)."""
        ...

    async def disconnect_user(self, user: str) -> None:
        """Close every connection of the user, on whichever node it is."""
        ...

    async def send_to_nodes(self, message: dict[str, Any]) -> None:
        """Hand a JSON object to `Application.on_node_message` on every node, this one
        included (through the broker: at most once each, lost if the broker is down)."""
        ...


class BackgroundWork:
    """Tasks an application starts that outlive the command that started them (a streamed
    answer, say). The application owns them; the node drains them on stop (`Application.drain`).

    `drain(grace)` refuses new work, waits up to `grace` seconds for what runs, then cancels the
    rest and waits (at most `cancel_grace`) while each handles its cancellation: a task that
    must record its fate (mark itself failed) does so in its `CancelledError` handler, while
    the broker and database are still open. A task's exception is logged, never lost.
    """

    def __init__(self, name: str = "background work") -> None:
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def draining(self) -> bool:
        return self._draining

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        if self._draining:
            coro.close()
            raise RuntimeError(f"{self.name}: the node is stopping")
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def drain(self, grace: float, cancel_grace: float = 5.0) -> None:
        self._draining = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=cancel_grace)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logging.getLogger("hub.rules").error("%s failed", self.name,
                                                  exc_info=task.exception())


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

    async def start(self, hub: HubAPI) -> None:  # noqa: B027 - optional hook, no-op by default
        """Open what the application needs (database, writers) once the hub is up."""

    async def close(self) -> None: ...  # noqa: B027 - optional hook, no-op by default

    async def drain(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """The node is stopping: let background work finish (see `BackgroundWork`). Called
        after clients were told to reconnect and before `close`; the broker still publishes,
        so other nodes' subscribers keep receiving. Bounded by the application's own grace."""

    def on_node_message(self, message: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """A message of `HubAPI.send_to_nodes`, from any node. Runs on the event loop: start
        a task for anything that waits."""

    async def ready(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Raise when a dependency (the database) is unreachable; used by /readyz."""

    def routes(self) -> list[BaseRoute]:
        """HTTP API routes of the application, served under the hub's API key."""
        return []

    def public_routes(self) -> list[BaseRoute]:
        """Routes served without the API key: the application's web pages, their assets, and
        endpoints that authenticate on their own. Matched after the hub's routes, so they
        cannot shadow `/healthz`, `/readyz`, `/metrics` or `/api/*`."""
        return []
