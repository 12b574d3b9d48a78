"""FitSync as an `Application` of the hub: its channel rules, RPC methods and HTTP routes.

Connect-time effects: a user seen in a valid token but unknown to the database is created, and
every connection is subscribed by the server to its own `user:<id>` channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.routing import BaseRoute

from channels import api, coach, dev_login, session, trainer, user, web
from channels.base import Context, parse_object
from hub.config import Settings
from hub.protocol.codes import ErrorCode, ReplyError
from hub.rules import Application, BackgroundWork, ChannelRule, HubAPI, Principal
from models.db import Database
from models.event_writer import EventWriter
from models.user_directory import UserDirectory

CONNECT_LATER = ErrorCode.TOO_MANY_REQUESTS.with_message("the node is busy; connect again later")
"""A connect whose new user could not be stored in time: temporary, so the SDKs retry it
with jittered backoff."""

RpcMethod = Callable[[Context, Principal, dict[str, Any]], Awaitable[dict[str, Any]]]


class FitSyncApplication(Application):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url)
        self.writer = EventWriter(self.db)
        self.ctx: Context | None = None
        self._rules: dict[str, ChannelRule] = {}
        self.background = BackgroundWork("coach answers")
        self.coach = coach.CoachService(settings, self.background)
        self._methods: dict[str, RpcMethod] = {**session.RPC, **trainer.RPC,
                                               **coach.rpc(self.coach)}
        self.users = UserDirectory(self.db)

    async def start(self, hub: HubAPI) -> None:
        await self.db.start()
        await self.users.load()
        self.writer.start(observer=hub.metrics)
        self.ctx = Context(self.db, self.writer, hub)
        self._rules = {
            rule.namespace: rule
            for rule in (session.SessionRule(self.ctx), coach.CoachRule(self.ctx, self.settings),
                         user.UserRule(), trainer.TrainerRule(self.ctx))
        }
        await self.coach.start(self.ctx)

    async def drain(self) -> None:
        await self.coach.drain()

    async def close(self) -> None:
        await self.coach.close()
        await self.users.close()
        await self.writer.close()
        await self.db.close()

    async def ready(self) -> None:
        await self.db.ping()

    def rule(self, namespace: str) -> ChannelRule | None:
        return self._rules.get(namespace)

    async def on_connect(self, who: Principal) -> list[str]:
        """A known user costs no database round trip; a new one is created in a batch with
        the others connecting meanwhile, before the connect is answered."""
        if not self.users.known(who.user):
            role = "athlete" if who.role == "device" else who.role
            try:
                await self.users.create(who.user, role)
            except Exception:  # noqa: BLE001 - busy, or whatever the driver raised: retry later
                raise ReplyError(CONNECT_LATER) from None
        return [user.channel_of(who.user)]

    def on_node_message(self, message: dict[str, Any]) -> None:
        self.coach.on_node_message(message)

    async def rpc(self, who: Principal, method: str, data: bytes) -> bytes:
        handler = self._methods.get(method)
        if handler is None:
            raise ReplyError(ErrorCode.METHOD_NOT_FOUND.with_message(f"no RPC method {method!r}"))
        params = parse_object(data, "rpc data") if data else {}
        assert self.ctx is not None
        return orjson.dumps(await handler(self.ctx, who, params))

    def routes(self) -> list[BaseRoute]:
        return api.routes(lambda: self._context())

    def public_routes(self) -> list[BaseRoute]:
        """The web app (pages, assets, session snapshot) and, in development, the dev login."""
        return [*dev_login.routes(self.settings, self._context),
                *web.routes(self.settings, self._context)]

    def _context(self) -> Context:
        assert self.ctx is not None, "the application has not started"
        return self.ctx
