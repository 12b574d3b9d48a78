"""Why an ask is refused, raised by the coach's queries on either backend (`coach_queries`, and
`coach_queries_pg` for the per-ask ones on PostgreSQL)."""

from __future__ import annotations


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
