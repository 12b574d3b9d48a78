"""`user:<user_id>` — personal notifications, subscribed by the server at connect.

Only that user may hold it; the app's backend publishes into it through the HTTP API.
"""

from __future__ import annotations

from channels.base import deny
from hub.broker.base import HistoryOptions
from hub.rules import ChannelOptions, ChannelRule, Principal


def channel_of(user_id: str) -> str:
    return f"user:{user_id}"


class UserRule(ChannelRule):
    namespace = "user"
    options = ChannelOptions(history=HistoryOptions(size=100, ttl=86400, meta_ttl=7 * 86400))

    async def authorize_subscribe(self, who: Principal, channel_id: str) -> None:
        if who.user != channel_id:
            raise deny()
