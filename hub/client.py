"""One connection's protocol state machine: commands in, replies and pushes out.

The socket layer (`hub/connection.py`) hands every inbound frame to `Client.on_frame`; replies
and pushes leave through the connection's `Writer`. Commands are handled strictly in the order
they arrived, one at a time, as the SDKs expect (a subscribe reply must precede that channel's
publications). Pongs are handled at once, outside that queue, so a slow command never makes a
client look dead.

Nothing here touches a socket or knows what a workout is: channel decisions go to the
application's `ChannelRule`s through the node.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from hub import __version__, auth, logs
from hub.broker.base import BrokerUnavailable, ClientInfo, StreamPosition
from hub.protocol import messages
from hub.protocol.codec import Codec, Message
from hub.protocol.codes import (
    Disconnect,
    DisconnectCode,
    DisconnectError,
    ErrorCode,
    ProtocolError,
    ReplyError,
    UnsubscribeCode,
)
from hub.registry import Subscription
from hub.rules import Principal
from hub.writer import OP_BINARY, OP_TEXT, Outbound, Writer

if TYPE_CHECKING:
    from hub.node import Node

log = logging.getLogger("hub.client")

CONNECTING, CONNECTED, CLOSED = 0, 1, 2
_MAX_QUEUED_COMMANDS = 1000
_SHUTTING_DOWN = ErrorCode.INTERNAL.with_message("the node is shutting down; retry")
"""The temporary error for commands that arrive while the connection is being drained."""


class Transport(Protocol):
    """What the client needs from its socket: the outbound queue and a way to close."""

    writer: Writer

    def close(self, disconnect: Disconnect) -> None: ...


class Client:
    __slots__ = (
        "_awaiting_pong",
        "_expires_close_at",
        "_finishing",
        "_queue",
        "_step",
        "_step_at",
        "_task",
        "_timer",
        "_tokens",
        "_tokens_at",
        "codec",
        "codec_index",
        "id",
        "identity",
        "node",
        "opcode",
        "principal",
        "state",
        "subs",
        "transport",
    )

    def __init__(self, node: Node, transport: Transport, codec_index: int, codec: Codec) -> None:
        self.node = node
        self.transport = transport
        self.codec = codec
        self.codec_index = codec_index
        self.opcode = OP_BINARY if codec.binary else OP_TEXT
        self.id = uuid.uuid4().hex
        self.state = CONNECTING
        node.connecting += 1
        self.identity: auth.Identity | None = None
        self.principal = Principal(user="", role="")
        self.subs: dict[str, Subscription] = {}
        self._queue: list[Message] = []
        """Commands read but not yet handled, at most _MAX_QUEUED_COMMANDS: a list, whose empty
        form costs 56 bytes against a deque's 600 on every idle connection."""
        self._task: asyncio.Task[None] | None = None
        self._awaiting_pong = False
        self._tokens = node.settings.commands_per_second
        self._tokens_at = time.monotonic()
        self._finishing = False
        self._timer: asyncio.TimerHandle | None = None
        self._step: Callable[[Client], None] = Client._stale
        self._step_at = 0.0
        self._expires_close_at = 0.0
        self._set_step(node.settings.connect_timeout, Client._stale)

    # -- inbound ---------------------------------------------------------------------------

    def on_frame(self, payload: bytes) -> None:
        """Decode one frame and queue its commands; a frame that cannot be decoded closes 3501."""
        if self.state == CLOSED:
            return
        try:
            commands = self.codec.decode(payload)
        except ProtocolError as exc:
            log.info("client %s sent a malformed frame: %s", self.id, exc)
            self.close(DisconnectCode.BAD_REQUEST)
            return
        for command in commands:
            if not command:
                self._awaiting_pong = False
                continue
            if self._finishing:
                self._refuse_finishing(command)
                continue
            if not self._take_token():
                self._refuse_rate(command)
                continue
            self._queue.append(command)
        if len(self._queue) > _MAX_QUEUED_COMMANDS:
            self.close(DisconnectCode.TOO_MANY_REQUESTS)
            return
        if self._queue and self._task is None:
            self._task = self.node.loop.create_task(self._drain())

    def _take_token(self) -> bool:
        """Token bucket: `commands_per_second` sustained, the same number as a burst."""
        rate = self.node.settings.commands_per_second
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _refuse_rate(self, command: Message) -> None:
        command_id = command.get("id")
        method = _method_of(command)
        label = method if method in _HANDLERS else "unknown"  # bounded label values only
        self.node.metrics.command(label, "rate_limited").inc()
        if command_id:
            self.send(messages.error_reply(command_id, ErrorCode.TOO_MANY_REQUESTS))

    async def finish_commands(self) -> None:
        """Before a shutdown disconnect: the command being handled finishes (its reply is sent);
        commands not started, and any that arrive from now on, fail with the temporary error,
        which the client retries on its next connection."""
        self._finishing = True
        while self._queue:
            self._refuse_finishing(self._queue.pop(0))
        if self._task is not None:
            await asyncio.wait([self._task])

    def _refuse_finishing(self, command: Message) -> None:
        method = _method_of(command)
        label = method if method in _HANDLERS else "unknown"
        self.node.metrics.command(label, "shutting_down").inc()
        command_id = command.get("id")
        if command_id:
            self.send(messages.error_reply(command_id, _SHUTTING_DOWN))

    async def _drain(self) -> None:
        try:
            while self._queue and self.state != CLOSED:
                await self._dispatch(self._queue.pop(0))
        finally:
            self._task = None

    async def _dispatch(self, command: Message) -> None:
        method = _method_of(command)
        command_id = command.get("id")
        if method is None or not isinstance(command.get(method, {}), dict):
            self.close(DisconnectCode.BAD_REQUEST)
            return
        # A JSON `true` is a Python int too, but no command id.
        has_id = isinstance(command_id, int) and not isinstance(command_id, bool) and command_id > 0
        if not has_id and method != "send":
            self.close(DisconnectCode.BAD_REQUEST)
            return
        if self.state == CONNECTING and method != "connect":
            self.close(DisconnectCode.BAD_REQUEST)
            return
        handler = _HANDLERS.get(method)
        if handler is None:
            self._answer_error(command_id, "unknown", ErrorCode.METHOD_NOT_FOUND)
            return
        body = command.get(method) or {}
        channel = body.get("channel")
        logs.bind_command(self.id, self.principal.user,
                          channel if isinstance(channel, str) else None)
        started = time.perf_counter()
        try:
            result = await handler(self, body)
        except ReplyError as exc:
            self._answer_error(command_id, method, exc.error)
        except DisconnectError as exc:
            self.node.metrics.command(method, "disconnect").inc()
            self.close(exc.disconnect)
        except BrokerUnavailable as exc:
            log.warning("command %s from client %s: broker unavailable (%s)", method, self.id, exc)
            self._answer_error(command_id, method, ErrorCode.BROKER_UNAVAILABLE)
        except Exception:
            log.exception("command %s from client %s failed", method, self.id)
            self._answer_error(command_id, method, ErrorCode.INTERNAL)
        else:
            self.node.metrics.command(method, "ok").inc()
            if result is not None and command_id:
                self.send(messages.reply(command_id, method, result))
                if method in ("subscribe", "connect"):
                    self.node.release_parked(self)
        self.node.metrics.command_timer(method).observe(time.perf_counter() - started)

    def _answer_error(self, command_id: Any, method: str, error: Any) -> None:
        self.node.metrics.command(method, f"error_{error.code}").inc()
        if command_id:
            self.send(messages.error_reply(command_id, error))

    # -- outbound --------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        if self.state != CLOSED:
            self.transport.writer.send(Outbound(self.codec.encode(message), self.opcode))

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, disconnect: Disconnect) -> None:
        """Close with a code; idempotent. Cleanup of subscriptions happens in `closed`."""
        if self.state == CLOSED:
            return
        if disconnect is not DisconnectCode.SHUTDOWN:
            self.node.metrics.disconnects.labels(str(disconnect.code)).inc()
        self.transport.close(disconnect)

    def closed(self) -> None:
        """The socket is gone: forget every subscription and timer."""
        if self.state == CLOSED:
            return
        was_connected = self.state == CONNECTED
        if self.state == CONNECTING:
            self.node.connecting -= 1
        self.state = CLOSED
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        if was_connected:
            self.node.forget_client(self)

    def _stale(self) -> None:
        """No connect within `connect_timeout` of the socket opening: 3502, which the SDKs
        do not retry. A connect that arrived and waits for its turn, or is being answered,
        is the node's delay, not the client's: it is answered (maybe with a temporary error),
        and checked again after another `connect_timeout`."""
        if self.state != CONNECTING:
            return
        if self._queue or self._task is not None:
            self._set_step(self.node.settings.connect_timeout, Client._stale)
            return
        self.close(DisconnectCode.STALE)

    def _schedule_ping(self, first: bool = False) -> None:
        interval = self.node.settings.ping_interval
        delay = random.uniform(interval / 2, interval) if first else interval
        self._set_step(delay, Client._ping)

    def _ping(self) -> None:
        if self.state != CONNECTED:
            return
        self.transport.writer.send(self.node.ping_outbound(self.codec_index))
        self._awaiting_pong = True
        self._set_step(self.node.settings.pong_timeout, Client._check_pong)

    def _check_pong(self) -> None:
        if self._awaiting_pong:
            self.close(DisconnectCode.NO_PONG)
            return
        interval, timeout = self.node.settings.ping_interval, self.node.settings.pong_timeout
        self._set_step(max(interval - timeout, 0.1), Client._ping)

    def _arm_expiry(self) -> int:
        """Seconds until the token expires (0: never); closes 3005 if no refresh by then+grace."""
        assert self.identity is not None
        expires_at = self.identity.expires_at
        self._expires_close_at = 0.0
        if expires_at:
            self._expires_close_at = (self.node.loop.time() + max(expires_at - time.time(), 0)
                                      + self.node.settings.expired_close_delay)
        self._rearm()
        return auth.ttl_of(expires_at) if expires_at else 0

    # -- the connection's one timer ------------------------------------------------------------
    # Two deadlines at most: the next step of the connect timeout → ping → pong cycle, and the
    # close of a token that expired unrefreshed. One timer serves the earlier (as centrifuge's
    # client keeps one): a second handle would cost ~0.25 KB on every idle connection.

    def _set_step(self, delay: float, step: Callable[[Client], None]) -> None:
        """Run `step` in `delay` seconds, in place of the step scheduled before."""
        self._step, self._step_at = step, self.node.loop.time() + delay
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        due = self._step_at
        if self._expires_close_at and (not due or self._expires_close_at < due):
            due = self._expires_close_at
        self._timer = self.node.loop.call_at(due, self._on_timer) if due else None

    def _on_timer(self) -> None:
        self._timer = None
        # The loop's timers fire on a millisecond clock: a deadline within one is due.
        now = self.node.loop.time() + 0.001
        if self._expires_close_at and self._expires_close_at <= now:
            self.close(DisconnectCode.EXPIRED)
            return
        if self._step_at and self._step_at <= now:
            self._step_at = 0.0
            self._step(self)  # schedules the next step, if any
        if self._timer is None and self.state != CLOSED:
            self._rearm()

    # -- commands --------------------------------------------------------------------------

    async def _connect(self, body: Message) -> Message:
        if self.state != CONNECTING:
            raise DisconnectError(DisconnectCode.BAD_REQUEST)
        try:
            identity = auth.verify(body.get("token", ""), self.node.settings)
        except auth.TokenExpired:
            raise ReplyError(ErrorCode.TOKEN_EXPIRED) from None
        except auth.InvalidToken as exc:
            log.info("client %s refused: %s", self.id, exc)
            raise DisconnectError(DisconnectCode.INVALID_TOKEN) from None
        self.identity = identity
        self.principal = Principal(identity.user, identity.role, identity.device, self.id)
        server_channels = await self.node.application.on_connect(self.principal)
        if self.state == CLOSED:
            return {}
        self.state = CONNECTED
        self.node.connecting -= 1
        self.node.register_client(self)
        self._schedule_ping(first=True)
        # Rounded up: centrifuge-js answers pings only when `ping` is above 0.
        result: Message = {"client": self.id, "version": __version__,
                           "ping": math.ceil(self.node.settings.ping_interval), "pong": True}
        ttl = self._arm_expiry()
        if ttl:
            result["expires"] = True
            result["ttl"] = ttl
        wanted = messages.object_field(body, "subs")
        subs: Message = {}
        for channel in server_channels:
            request = messages.object_field(wanted, channel)
            rule, _ = self.node.rule_for(channel)
            _, subs[channel] = await self.node.subscribe(self, channel, request, rule=rule)
        if subs:
            result["subs"] = subs
        return result

    async def _subscribe(self, body: Message) -> Message:
        channel = self._channel(body)
        if body.get("type"):
            raise ReplyError(ErrorCode.NOT_AVAILABLE.with_message(
                "map subscriptions are not supported"))
        if channel in self.subs:
            raise ReplyError(ErrorCode.ALREADY_SUBSCRIBED)
        limit = self.node.settings.max_subscriptions
        if len(self.subs) >= limit:
            raise ReplyError(ErrorCode.LIMIT_EXCEEDED.with_message(
                f"at most {limit} subscriptions per connection (HUB_MAX_SUBSCRIPTIONS)"))
        rule, channel_id = self.node.rule_for(channel)
        expires_at = self._check_sub_token(channel, body.get("token"))
        await rule.authorize_subscribe(self.principal, channel_id)
        _, result = await self.node.subscribe(self, channel, body, rule=rule,
                                              expires_at=expires_at)
        return result

    def _check_sub_token(self, channel: str, token: Any) -> int:
        """An optional subscription token must name this user and channel; returns its expiry
        (Unix seconds, 0 without a token)."""
        if not token:
            return 0
        try:
            claims = auth.verify_subscription(token, self.node.settings)
        except auth.TokenExpired:
            raise ReplyError(ErrorCode.TOKEN_EXPIRED) from None
        except auth.InvalidToken:
            raise ReplyError(
                ErrorCode.PERMISSION_DENIED.with_message("invalid subscription token")) from None
        if claims.user != self.principal.user or claims.channel != channel:
            raise ReplyError(ErrorCode.PERMISSION_DENIED.with_message(
                "subscription token is for another user or channel"))
        return claims.expires_at

    async def _sub_refresh(self, body: Message) -> Message:
        channel = self._channel(body)
        if body.get("type"):
            raise ReplyError(ErrorCode.NOT_AVAILABLE)
        sub = self.subs.get(channel)
        if sub is None:
            raise ReplyError(ErrorCode.PERMISSION_DENIED.with_message("not subscribed"))
        expires_at = self._check_sub_token(channel, body.get("token"))
        if not expires_at:
            raise ReplyError(ErrorCode.BAD_REQUEST.with_message("token is required"))
        self.node.arm_sub_expiry(sub, expires_at)
        return {"expires": True, "ttl": auth.ttl_of(expires_at)}

    async def _unsubscribe(self, body: Message) -> Message:
        channel = self._channel(body)
        sub = self.subs.get(channel)
        if sub is not None:
            await self.node.unsubscribe(self, sub)
        return {}

    async def _publish(self, body: Message) -> Message:
        channel = self._channel(body)
        if "data" not in body:
            raise ReplyError(ErrorCode.BAD_REQUEST.with_message("publish needs `data`"))
        rule, channel_id = self.node.rule_for(channel)
        payload = await rule.publish(self.principal, channel_id, body["data"])
        if payload is not None:
            await self.node.publish(channel, payload, info=self.info())
        return {}

    async def _presence(self, body: Message) -> Message:
        channel = await self._readable(body, "presence")
        presence = await self.node.broker.presence(channel)
        return {"presence": {cid: messages.client_info(i) for cid, i in presence.items()}}

    async def _presence_stats(self, body: Message) -> Message:
        channel = await self._readable(body, "presence")
        clients, users = await self.node.broker.presence_stats(channel)
        return {"num_clients": clients, "num_users": users}

    async def _history(self, body: Message) -> Message:
        channel = await self._readable(body, "history")
        since = messages.object_field(body, "since")
        position = None
        if since:
            position = StreamPosition(messages.int_field(since, "offset"),
                                      str(since.get("epoch", "")))
        return await self.node.history(channel, position, messages.int_field(body, "limit"),
                                       bool(body.get("reverse", False)))

    async def _readable(self, body: Message, feature: str) -> str:
        """Presence and history need the channel to offer them and the right to subscribe."""
        channel = self._channel(body)
        rule, channel_id = self.node.rule_for(channel)
        offered = rule.options.presence if feature == "presence" else rule.options.history
        if not offered:
            raise ReplyError(ErrorCode.NOT_AVAILABLE.with_message(
                f"{feature} is not kept for {rule.namespace}: channels"))
        if channel not in self.subs:
            await rule.authorize_subscribe(self.principal, channel_id)
        return channel

    async def _rpc(self, body: Message) -> Message:
        method = body.get("method")
        if not isinstance(method, str) or not method:
            raise ReplyError(ErrorCode.METHOD_NOT_FOUND)
        data = body.get("data") or b"{}"
        result = await self.node.application.rpc(self.principal, method, data)
        return {"data": result}

    async def _refresh(self, body: Message) -> Message:
        try:
            identity = auth.verify(body.get("token", ""), self.node.settings)
        except auth.TokenExpired:
            raise DisconnectError(DisconnectCode.EXPIRED) from None
        except auth.InvalidToken:
            raise DisconnectError(DisconnectCode.INVALID_TOKEN) from None
        assert self.identity is not None
        if identity.user != self.identity.user:
            raise DisconnectError(DisconnectCode.INVALID_TOKEN)
        self.identity = identity
        ttl = self._arm_expiry()
        return {"expires": True, "ttl": ttl} if ttl else {}

    async def _send(self, body: Message) -> None:
        """Asynchronous messages have no use in FitSync: accepted, counted and ignored."""

    async def _ping_command(self, body: Message) -> Message:
        raise ReplyError(ErrorCode.NOT_AVAILABLE)

    # -- helpers ---------------------------------------------------------------------------

    def _channel(self, body: Message) -> str:
        channel = body.get("channel")
        if not isinstance(channel, str) or not channel:
            raise DisconnectError(DisconnectCode.BAD_REQUEST)
        limit = self.node.settings.max_channel_length
        if len(channel) > limit:
            raise ReplyError(ErrorCode.BAD_REQUEST.with_message(
                f"channel name longer than {limit} characters (HUB_MAX_CHANNEL_LENGTH)"))
        return channel

    def info(self) -> ClientInfo:
        return ClientInfo(user=self.principal.user, client=self.id)

    def unsubscribed_by_server(self, sub: Subscription) -> None:
        self.send(messages.unsubscribe_push(sub.channel, UnsubscribeCode.SERVER))


def _method_of(command: Message) -> str | None:
    for key in command:
        if key != "id":
            return key
    return None


_HANDLERS: dict[str, Any] = {
    "connect": Client._connect,
    "subscribe": Client._subscribe,
    "unsubscribe": Client._unsubscribe,
    "publish": Client._publish,
    "presence": Client._presence,
    "presence_stats": Client._presence_stats,
    "history": Client._history,
    "rpc": Client._rpc,
    "refresh": Client._refresh,
    "sub_refresh": Client._sub_refresh,
    "send": Client._send,
    "ping": Client._ping_command,
}
