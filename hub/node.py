"""The node: owns the broker, the registry of local subscribers and the application's rules.

Data path for a publication: a client's publish (or the HTTP API) → `Node.publish` → broker
(offset and history) → `Node.on_publication` on every subscribed node → encode once per codec
→ each local subscriber's writer. The fan-out never awaits: it queues shared bytes and returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from hub import auth
from hub.broker.base import Broker, ClientInfo, Publication, StreamPosition
from hub.config import Settings
from hub.metrics import Metrics
from hub.protocol import messages
from hub.protocol.codecs import CODECS
from hub.protocol.codes import (
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ReplyError,
    UnsubscribeCode,
)
from hub.registry import Registry, Subscription
from hub.rules import Application, ChannelRule
from hub.writer import OP_BINARY, OP_TEXT, Flusher, Outbound

if TYPE_CHECKING:
    from hub.client import Client

log = logging.getLogger("hub.node")

Message = dict[str, Any]


class Node:
    def __init__(self, settings: Settings, broker: Broker, application: Application) -> None:
        self.settings = settings
        self.broker = broker
        self.application = application
        self.metrics = Metrics()
        self.registry = Registry()
        self.clients: dict[str, dict[Client, None]] = {}
        """Connected clients by user id, for server-side unsubscribe and disconnect."""
        self.loop = asyncio.get_running_loop()
        self.flusher = Flusher(self.loop)
        self._background: set[asyncio.Task[None]] = set()
        self._pings = [Outbound(c.ping, OP_BINARY if c.binary else OP_TEXT) for c in CODECS]

    async def start(self) -> None:
        await self.broker.start(self)
        await self.application.start(self)

    async def close(self) -> None:
        """Shut down: every client is told to reconnect (3001), then dependencies close."""
        for clients in list(self.clients.values()):
            for client in list(clients):
                client.close(DisconnectCode.SHUTDOWN)
        await self.application.drain()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.application.close()
        await self.broker.close()

    # -- clients ---------------------------------------------------------------------------

    def register_client(self, client: Client) -> None:
        self.clients.setdefault(client.principal.user, {})[client] = None
        self.metrics.connections.inc()

    def forget_client(self, client: Client) -> None:
        """Called once when a connected client's socket is gone."""
        users = self.clients.get(client.principal.user)
        if users is not None:
            users.pop(client, None)
            if not users:
                del self.clients[client.principal.user]
        self.metrics.connections.dec()
        subs = list(client.subs.values())
        client.subs.clear()
        for sub in subs:
            self._detach_locally(sub)
        if subs:
            self._spawn(self._detach_remotely(subs, client.info()))

    def ping_outbound(self, codec_index: int) -> Outbound:
        return self._pings[codec_index]

    # -- channels --------------------------------------------------------------------------

    def rule_for(self, channel: str) -> tuple[ChannelRule, str]:
        namespace, sep, channel_id = channel.partition(":")
        rule = self.application.rule(namespace) if sep and channel_id else None
        if rule is None:
            raise ReplyError(ErrorCode.UNKNOWN_CHANNEL)
        return rule, channel_id

    async def subscribe(
        self, client: Client, channel: str, request: Message, *, rule: ChannelRule,
        expires_at: int = 0,
    ) -> tuple[Subscription, Message]:
        """Attach a client to a channel and build its SubscribeResult, recovering if asked.

        The subscription is registered (and parks live publications) before history is read,
        so nothing published meanwhile can fall between the history and the live stream.
        """
        sub = Subscription(client, channel)
        client.subs[channel] = sub
        self.metrics.subscriptions.inc()
        try:
            if self.registry.add(sub):
                await self.broker.subscribe(channel)
            result = await self._position(channel, request, rule, sub)
            options = rule.options
            if options.presence:
                await self.broker.add_presence(channel, client.id, client.info(),
                                               self.settings.presence_ttl)
            if options.join_leave:
                await self.broker.publish_join(channel, client.info())
        except BaseException:
            client.subs.pop(channel, None)
            self._detach_locally(sub)
            raise
        if expires_at:
            result["expires"] = True
            result["ttl"] = auth.ttl_of(expires_at)
            self.arm_sub_expiry(sub, expires_at)
        return sub, result

    async def _position(
        self, channel: str, request: Message, rule: ChannelRule, sub: Subscription
    ) -> Message:
        history = rule.options.history
        if history is None:
            return {}
        result: Message = {"recoverable": True, "positioned": True}
        if not request.get("recover"):
            top = (await self.broker.history(channel, limit=0, meta_ttl=history.meta_ttl)).position
            result.update(_position_fields(top))
            sub.floor = top.offset
            return result
        since = StreamPosition(messages.int_field(request, "offset"),
                               str(request.get("epoch") or ""))
        found = await self.broker.history(channel, since=since, limit=-1,
                                          meta_ttl=history.meta_ttl)
        top, pubs = found.position, found.publications
        result["was_recovering"] = True
        sub.floor = top.offset
        if _is_recovered(since, top, pubs):
            result["recovered"] = True
            result.update(_position_fields(StreamPosition(since.offset, top.epoch)))
            if pubs:
                result["publications"] = [messages.publication(p) for p in pubs]
            return result
        if messages.int_field(request, "flag") & 2:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
        result.update(_position_fields(top))
        return result

    async def unsubscribe(self, client: Client, sub: Subscription) -> None:
        client.subs.pop(sub.channel, None)
        self._detach_locally(sub)
        await self._detach_remotely([sub], client.info())

    def _detach_locally(self, sub: Subscription) -> None:
        """Stop delivering to `sub` at once; broker bookkeeping follows asynchronously."""
        if sub.expiry is not None:
            sub.expiry.cancel()
        sub.pending = None
        self.metrics.subscriptions.dec()
        if self.registry.remove(sub):
            self._spawn(self.broker.unsubscribe(sub.channel))

    async def _detach_remotely(self, subs: list[Subscription], info: ClientInfo) -> None:
        for sub in subs:
            rule, _ = self.rule_for(sub.channel)
            if rule.options.presence:
                await self.broker.remove_presence(sub.channel, info.client)
            if rule.options.join_leave:
                await self.broker.publish_leave(sub.channel, info)

    def arm_sub_expiry(self, sub: Subscription, expires_at: int) -> None:
        """A subscription token not refreshed by its expiry (plus grace) ends that subscription."""
        if sub.expiry is not None:
            sub.expiry.cancel()
        delay = max(expires_at - time.time(), 0) + self.settings.expired_close_delay
        sub.expiry = self.loop.call_later(delay, self._expire_subscription, sub)

    def _expire_subscription(self, sub: Subscription) -> None:
        client = sub.client
        if client.subs.get(sub.channel) is not sub:
            return
        client.send(messages.unsubscribe_push(sub.channel, UnsubscribeCode.EXPIRED))
        self._spawn(self.unsubscribe(client, sub))

    # -- publishing and reading --------------------------------------------------------------

    async def publish(
        self, channel: str, data: bytes, *, info: ClientInfo | None = None
    ) -> StreamPosition:
        rule, _ = self.rule_for(channel)
        return await self.broker.publish(channel, data, info=info, history=rule.options.history)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self.broker.presence(channel)

    async def history(
        self, channel: str, since: StreamPosition | None, limit: int, reverse: bool
    ) -> Message:
        rule, _ = self.rule_for(channel)
        assert rule.options.history is not None
        cap = rule.options.history.size
        limit = cap if limit < 0 or limit > cap else limit
        found = await self.broker.history(channel, since=since, limit=limit, reverse=reverse,
                                          meta_ttl=rule.options.history.meta_ttl)
        if since is not None and since.epoch != found.position.epoch:
            raise ReplyError(ErrorCode.UNRECOVERABLE_POSITION)
        result: Message = _position_fields(found.position)
        result["publications"] = [messages.publication(p) for p in found.publications]
        return result

    # -- broker events (the fan-out) ---------------------------------------------------------

    def on_publication(self, channel: str, publication: Publication) -> None:
        self.metrics.publications.inc()
        subs = self.registry.subscribers(channel)
        if not subs:
            return
        self._fan_out(subs, messages.pub_push(channel, publication), publication.offset)

    def on_join(self, channel: str, info: ClientInfo) -> None:
        subs = self.registry.subscribers(channel)
        if subs:
            self._fan_out(subs, messages.join_push(channel, info), 0)

    def on_leave(self, channel: str, info: ClientInfo) -> None:
        subs = self.registry.subscribers(channel)
        if subs:
            self._fan_out(subs, messages.leave_push(channel, info), 0)

    def _fan_out(self, subs: dict[Subscription, None], push: Message, offset: int) -> None:
        """Encode once per codec in use, then queue the same bytes for every subscriber."""
        encoded: list[Outbound | None] = [None] * len(CODECS)
        for sub in subs:
            client = sub.client
            out = encoded[client.codec_index]
            if out is None:
                out = encoded[client.codec_index] = Outbound(
                    CODECS[client.codec_index].encode(push), client.opcode
                )
            if sub.pending is not None:
                sub.pending.append((offset, out))
            else:
                client.transport.writer.send(out)
        self.metrics.deliveries.inc(len(subs))

    # -- server-side actions (the HubAPI the rules use) ------------------------------------------

    def user_channels(self, user: str) -> set[str]:
        return {ch for c in self.clients.get(user, {}) for ch in c.subs}

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        for client in list(self.clients.get(user, {})):
            sub = client.subs.get(channel)
            if sub is not None:
                client.unsubscribed_by_server(sub)
                await self.unsubscribe(client, sub)

    async def disconnect_user(
        self, user: str, disconnect: Disconnect = DisconnectCode.FORCE_NO_RECONNECT
    ) -> int:
        clients = list(self.clients.get(user, {}))
        for client in clients:
            client.close(disconnect)
        return len(clients)

    def _spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background broker call failed", exc_info=task.exception())


def _position_fields(position: StreamPosition) -> Message:
    out: Message = {"epoch": position.epoch}
    if position.offset:
        out["offset"] = position.offset
    return out


def _is_recovered(since: StreamPosition, top: StreamPosition, pubs: list[Publication]) -> bool:
    """The reference server's rule: same epoch and no gap between the client and the top."""
    if since.epoch != top.epoch:
        return False
    if not pubs:
        return top.offset == since.offset
    return pubs[0].offset == since.offset + 1 and pubs[-1].offset == top.offset
