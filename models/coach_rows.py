"""What the coach's queries share on both backends (`coach_queries`, and `coach_queries_pg` for
the per-ask ones on PostgreSQL): the refusals of an ask, and the rows they hand out."""

from __future__ import annotations

from typing import Any

from models.queries import iso

RATE_WINDOW_S = 60.0
"""Asks are counted over the last minute (`HUB_COACH_ASKS_PER_MINUTE`)."""


class AnswerInProgress(Exception):
    """The user has an answer streaming (with a live lease); its id is `reply_id`."""

    def __init__(self, reply_id: str | None) -> None:
        super().__init__("an answer is still streaming")
        self.reply_id = reply_id


class TooManyAsks(Exception):
    """The user asked `limit` times within the last minute already."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} asks per minute")
        self.limit = limit


def history_item(values: dict[str, Any]) -> dict[str, Any]:
    """A `coach.history` item from a new row's values."""
    item: dict[str, Any] = {
        "message_id": values["id"],
        "role": values["role"],
        "text": values["text"],
        "status": values["status"],
    }
    if values.get("reply_to") is not None:
        item["reply_to"] = values["reply_to"]
    item["created_at"] = iso(values["created_at"])
    return item
