"""What the coach model is asked: the system prompt, the athlete's workout context from the
database, the recent conversation, and the question, within a budget of characters.

The budget (`HUB_COACH_PROMPT_BUDGET`) counts the characters of every message's content; a
character budget needs no tokenizer (nothing is downloaded at run time) and, at roughly four
characters a token for English, is easy to set against a model's context size. The system
prompt, the question and the athlete's context always go in (the context cut to what is left
after the other two); then as many of the latest conversation turns as fit, oldest left out
first: a turn is never cut, and an answer never goes without its question.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.config import Settings
from models import coach_queries
from models.db import Database

RECENT_SETS = 10
"""Sets of the current (or latest) session shown to the model."""
CONVERSATION_LOOKBACK = 40
"""Messages read back from the conversation; the budget decides how many are sent."""

Message = dict[str, str]


def system_prompt_of(settings: Settings) -> str:
    """`HUB_COACH_SYSTEM_PROMPT_FILE`'s text when set (read once, at start), else
    `HUB_COACH_SYSTEM_PROMPT`."""
    if settings.coach_system_prompt_file:
        return Path(settings.coach_system_prompt_file).read_text(encoding="utf-8").strip()
    return settings.coach_system_prompt


class PromptBuilder:
    def __init__(self, db: Database, system_prompt: str, budget: int) -> None:
        self.db = db
        self.system_prompt = system_prompt
        self.budget = budget

    async def build(self, user_id: str, question: dict[str, Any]) -> list[Message]:
        """The chat messages for answering `question` (a `coach.history` item just stored)."""
        session, sets, earlier = await coach_queries.prompt_rows(
            self.db, user_id, sets=RECENT_SETS, messages=CONVERSATION_LOOKBACK)
        context = athlete_context(session, sets)
        left = self.budget - len(self.system_prompt) - len(question["text"])
        context = context[:max(left, 0)]
        left -= len(context)
        turns: list[Message] = []
        for item in reversed(earlier):
            if item["message_id"] == question["message_id"] or not _worth_sending(item):
                continue
            if len(item["text"]) > left:
                break
            left -= len(item["text"])
            turns.append({"role": item["role"], "content": item["text"]})
        turns.reverse()
        if turns and turns[0]["role"] == "assistant":
            turns.pop(0)  # its question did not fit
        return [{"role": "system", "content": self.system_prompt},
                {"role": "system", "content": context},
                *turns,
                {"role": "user", "content": question["text"]}]


def athlete_context(session: dict[str, Any] | None, sets: list[dict[str, Any]]) -> str:
    """The active session (or the latest one) in a few lines: totals and recent sets."""
    if session is None:
        return "Athlete context: no workout recorded yet."
    s = session["summary"]
    title = f' "{session["title"]}"' if session["title"] else ""
    when = "in progress" if session["status"] == "active" else (
        f"ended {_ago(session['ended_at'])}")
    lines = [
        f"Athlete context: {'current' if session['status'] == 'active' else 'latest'} "
        f"workout{title}, {when}, {s['duration_s'] // 60} min: {s['sets']} sets, "
        f"{s['reps']} reps, {s['volume_kg']:g} kg volume"
        + (f", heart rate avg {s['avg_bpm']:g} / max {s['max_bpm']} bpm"
           if s["avg_bpm"] is not None else "") + "."
    ]
    if sets:
        lines.append("Recent sets, oldest first:")
        lines.extend(
            f"- {x['exercise']}: {x['reps']} reps x {x['weight_kg']:g} kg"
            + (f", RPE {x['rpe']:g}" if x["rpe"] is not None else "")
            for x in sets
        )
    return "\n".join(lines)


def _worth_sending(item: dict[str, Any]) -> bool:
    """Questions, and answers the athlete saw to their end or cancelled; not failed ones."""
    if not item["text"]:
        return False
    return item["role"] == "user" or item["status"] in ("done", "cancelled")


def _ago(iso_time: str | None) -> str:
    if iso_time is None:
        return "recently"
    then = datetime.fromisoformat(iso_time)
    hours = (datetime.now(UTC) - then).total_seconds() / 3600
    if hours < 1:
        return "less than an hour ago"
    if hours < 48:
        return f"{int(hours)} h ago"
    return f"{int(hours // 24)} days ago"
