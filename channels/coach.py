"""`coach:<user_id>` — the athlete's AI-coach conversation, fed only by the server.

Subscribe: that user (and their devices), trainers linked to them (read only), admins.
Nobody publishes from a client: questions go through the `coach.ask` RPC.
"""

from __future__ import annotations

from channels.base import Context, deny
from hub.broker.base import HistoryOptions
from hub.rules import ChannelOptions, ChannelRule, Principal


class CoachRule(ChannelRule):
    namespace = "coach"
    options = ChannelOptions(history=HistoryOptions(size=2000, ttl=3600, meta_ttl=86400))

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def authorize_subscribe(self, who: Principal, channel_id: str) -> None:
        if not await self.ctx.may_watch(who, channel_id):
            raise deny()
