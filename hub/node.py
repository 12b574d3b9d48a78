"""The node: owns the broker, the registry of local subscribers and the application's rules.

Data path for a publication: a client's publish (or the HTTP API) → `Node.publish` → broker
(offset and history) → `Node.on_publication` on every subscribed node → continuity check (no
gap, no duplicate) → encode once per codec → each local subscriber's writer. The fan-out never
awaits: it queues shared bytes and returns.

A subscription's life (broker subscription per channel, presence, join and leave) belongs to
`hub.subscriptions.Lifecycle`; actions on a user's connections wherever they are travel as
control messages (`hub.control`) through the broker to every node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from hub import auth, control
from hub.broker.base import Broker, ClientInfo, HistoryResult, Publication, StreamPosition
from hub.config import Settings
from hub.continuity import Continuity
from hub.metrics import Metrics
from hub.protocol import messages
from hub.protocol.codec import Message
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
from hub.stalls import StallWatch
from hub.subscriptions import Lifecycle
from hub.writer import OP_BINARY, OP_TEXT, Flusher, Outbound

if TYPE_CHECKING:
    from hub.client import Client

log = logging.getLogger("hub.node")



class Node:
    def __init__(self, settings: Settings, broker: Broker, application: Application) -> None:
        self.settings = settings
        self.broker = broker
        self.application = application
        self.metrics = Metrics()
        self.registry = Registry()
        self.clients: dict[str, dict[Client, None]] = {}
        """Connected clients by user id, for server-side unsubscribe and disconnect."""
        self.connecting = 0
        """Clients whose socket is open but whose connect is not answered yet."""
        self.loop = asyncio.get_running_loop()
        self.flusher = Flusher(self.loop)
        self._background: set[asyncio.Task[None]] = set()
        self.continuity = Continuity(self.metrics, self._history_since, self._deliver,
                                     self._insufficient_state, self._spawn)
        self.lifecycle = Lifecycle(settings, broker, self.registry, self.metrics, self._spawn,
                                   unbound=self.continuity.forget)
        self.stalls = StallWatch(self.metrics.event_loop_lag, self.metrics.gc_pause)
        self._pings = [Outbound(c.ping, OP_BINARY if c.binary else OP_TEXT) for c in CODECS]

    async def start(self) -> None:
        await self.broker.start(self)
        await self.application.start(self)
        self.lifecycle.start()
        self.stalls.start()

    async def close(self) -> None:
        """Shut down: every client is told to reconnect (3001), then dependencies close."""
        for clients in list(self.clients.values()):
            for client in list(clients):
                client.close(DisconnectCode.SHUTDOWN)
        self.lifecycle.stop()
        self.stalls.stop()
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
        for sub in list(client.subs.values()):
            self.lifecycle.detach(sub)

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
        sub = self.lifecycle.begin(client, channel)
        try:
            await self.lifecycle.bind(channel)
            result = await self._position(channel, request, rule, sub)
            await self.lifecycle.announce(sub, rule.options)
        except BaseException:
            self.lifecycle.detach(sub)
            raise
        if expires_at and not sub.detached:
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
        """End `sub`; returns once its presence entry and leave are taken back."""
        retracting = self.lifecycle.detach(sub)
        if retracting is not None:
            await asyncio.wait([retracting])

    def release_parked(self, client: Client) -> None:
        self.lifecycle.release_parked(client)

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

    async def retained(
        self, channel: str, *, before: int | None = None, limit: int
    ) -> HistoryResult:
        rule, _ = self.rule_for(channel)
        assert rule.options.history is not None
        since = None if before is None else StreamPosition(before, "")
        return await self.broker.history(channel, since=since, limit=limit, reverse=True,
                                         meta_ttl=rule.options.history.meta_ttl)

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
        if publication.epoch and not self.continuity.accept(channel, publication):
            return
        self._deliver(channel, publication)

    def _deliver(self, channel: str, publication: Publication) -> None:
        subs = self.registry.subscribers(channel)
        if not subs:
            return
        self._fan_out(subs, messages.pub_push(channel, publication), publication.offset)

    def on_resubscribed(self, channels: list[str]) -> None:
        self.continuity.resubscribed(channels)

    async def _history_since(self, channel: str, since: StreamPosition) -> HistoryResult:
        rule, _ = self.rule_for(channel)
        meta_ttl = rule.options.history.meta_ttl if rule.options.history else 86400.0
        return await self.broker.history(channel, since=since, limit=-1, meta_ttl=meta_ttl)

    def _insufficient_state(self, channel: str) -> None:
        """Subscribers of `channel` missed publications history cannot give back: they
        reconnect and their SDK is told it did not recover."""
        for sub in list(self.registry.subscribers(channel) or ()):
            sub.client.close(DisconnectCode.INSUFFICIENT_STATE)

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

    # -- server-side actions (the HubAPI the rules use), on every node ---------------------------

    async def disconnect_user(
        self, user: str, disconnect: Disconnect = DisconnectCode.FORCE_NO_RECONNECT
    ) -> None:
        """Close every connection of `user`, on whichever node it is."""
        await self.broker.publish_control(control.encode(control.DisconnectUser(user, disconnect)))

    async def recheck_subscriptions(self, user: str) -> None:
        """Re-authorize every subscription of `user` on every node; the ones no longer allowed
        end with a server unsubscribe (2000)."""
        await self.broker.publish_control(control.encode(control.RecheckUser(user)))

    async def send_to_nodes(self, message: dict[str, Any]) -> None:
        """Hand `message` to the application of every node, this one included."""
        await self.broker.publish_control(control.encode(control.ApplicationMessage(message)))

    def on_control(self, data: bytes) -> None:
        try:
            command = control.decode(data)
        except control.MalformedControl as exc:
            log.warning("%s", exc)
            return
        if isinstance(command, control.ApplicationMessage):
            self.application.on_node_message(command.message)
            return
        clients = list(self.clients.get(command.user, ()))
        if isinstance(command, control.DisconnectUser):
            for client in clients:
                client.close(command.disconnect)
        elif clients:
            self._spawn(self._recheck(clients))

    async def _recheck(self, clients: list[Client]) -> None:
        for client in clients:
            for sub in list(client.subs.values()):
                rule, channel_id = self.rule_for(sub.channel)
                try:
                    await rule.authorize_subscribe(client.principal, channel_id)
                except ReplyError:
                    if not sub.detached:
                        client.unsubscribed_by_server(sub)
                        await self.unsubscribe(client, sub)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

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
