"""`trainer:<trainer_id>` — a trainer's roster feed: their clients' sessions starting and ending.

Subscribe: that trainer, admins. The server publishes; nobody else does.
Removing a trainer-client link takes the trainer off that client's channels at once.
"""

from __future__ import annotations

from typing import Any

from channels.base import Context, deny
from hub.broker.base import HistoryOptions
from hub.rules import ChannelOptions, ChannelRule, Principal
from models import queries


class TrainerRule(ChannelRule):
    namespace = "trainer"
    options = ChannelOptions(history=HistoryOptions(size=200, ttl=86400, meta_ttl=7 * 86400))

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def authorize_subscribe(self, who: Principal, channel_id: str) -> None:
        if who.is_admin or (who.role == "trainer" and who.user == channel_id):
            return
        raise deny()


async def unlinked(ctx: Context, trainer_id: str, client_id: str) -> None:
    """The link is gone: every node re-checks the trainer's subscriptions, so the client's
    coach and session channels end at once wherever the trainer is connected."""
    await ctx.hub.recheck_subscriptions(trainer_id)


async def clients(ctx: Context, who: Principal, params: dict[str, Any]) -> dict[str, Any]:
    """`trainer.clients`: the trainer's linked clients and their live session, if any."""
    if who.role != "trainer":
        raise deny("only trainers have clients")
    return {"clients": await queries.clients_of(ctx.db, who.user)}


RPC = {"trainer.clients": clients}
