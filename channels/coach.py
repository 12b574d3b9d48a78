"""`coach:<user_id>` — the athlete's AI-coach conversation, fed only by the server.

Subscribe: that user (and their devices), trainers linked to them (read only), admins.
Nobody publishes from a client: questions go through the `coach.ask` RPC, and the answer
streams into the channel as `message`, `delta`…, then `done` | `cancelled` | `error`
(`channels.coach_answer`). The channel keeps presence without join/leave, so whether any of
the user's connections watches can be asked of the broker, whichever node they are on.

RPCs: `coach.ask`, `coach.cancel`, `coach.history`.

Cancel across nodes: the node streaming an answer cancels it at once (its model stream is
closed). A cancel arriving on another node ends the row as `cancelled` in the database
(conditional, so exactly once), answers `{"cancelled": true}` and tells every node
(`HubAPI.send_to_nodes`, `{"coach_cancelled": reply_id}`); the streaming node then reads the
row, closes the model stream and publishes `cancelled` after its last delta, so the answer is
still published by one task, in order. Should that message be lost (the broker down), the
streaming node notices at its next save (within `HUB_COACH_SAVE_INTERVAL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from channels.base import DATABASE_UNAVAILABLE, Context, bad_request, deny, optional_limit
from channels.coach_answer import Coach, coach_channel
from channels.coach_prompt import PromptBuilder, system_prompt_of
from hub.broker.base import HistoryOptions
from hub.config import Settings
from hub.protocol.codes import ErrorCode, ReplyError
from hub.rules import BackgroundWork, ChannelOptions, ChannelRule, Principal
from models import coach_queries, queries

log = logging.getLogger("channels.coach")

MAX_QUESTION_CHARS = 4000
HISTORY_PAGE = 50

NOT_CONFIGURED = ErrorCode.NOT_AVAILABLE.with_message(
    "the AI coach is not configured: set OPENAI_API_KEY (or HUB_COACH_API_KEY) on the hub, "
    "and OPENAI_BASE_URL for an OpenAI-compatible server other than OpenAI's")
STOPPING = ErrorCode.NOT_AVAILABLE.with_message("the hub is restarting: ask again in a moment")


def shutdown_grace(settings: Settings) -> float:
    """How long streaming answers get to finish once the node closes the application.

    Answers stream on through the whole drain (clients leaving over `HUB_DRAIN_SECONDS` do not
    stop them); what the drain leaves of `HUB_SHUTDOWN_TIMEOUT` is split, as `hub.drain` does,
    between the last commands and closing the application: half of it, 1.5 s by default. The
    answers still streaming then are failed (retryable)."""
    slack = settings.shutdown_timeout - settings.drain_refuse_delay - settings.drain_seconds
    return max(slack, 0.0) / 2


def history_size(settings: Settings) -> int:
    """Enough to hold two whole answers: each delta carries at least one token of the
    model's (at most `HUB_COACH_MAX_TOKENS`), plus the question and the final publication."""
    return max(2000, 2 * (settings.coach_max_tokens + 2))


class CoachRule(ChannelRule):
    namespace = "coach"

    def __init__(self, ctx: Context, settings: Settings) -> None:
        self.ctx = ctx
        self.options = ChannelOptions(
            history=HistoryOptions(size=history_size(settings), ttl=settings.coach_history_ttl,
                                   meta_ttl=86400),
            presence=True,
        )

    async def authorize_subscribe(self, who: Principal, channel_id: str) -> None:
        if not await self.ctx.may_watch(who, channel_id):
            raise deny()


class CoachService:
    """The coach of one node: its running answers, the prompt builder, the stale sweep."""

    def __init__(self, settings: Settings, background: BackgroundWork) -> None:
        self.settings = settings
        self.background = background
        self._coach: Coach | None = None
        self._prompts: PromptBuilder | None = None
        self._keepers: list[asyncio.Task[None]] = []
        """The sweep of dead answers and the batched save of this node's streaming ones."""

    def on_node_message(self, message: dict[str, Any]) -> None:
        """`{"coach_cancelled": reply_id}`: an answer streaming here was cancelled through
        another node; stop it now rather than at its next save."""
        reply_id = message.get("coach_cancelled")
        running = self._coach.running.get(reply_id) if self._coach and reply_id else None
        if running is not None and running.streaming and not self.background.draining:
            self.background.spawn(running.row_lost())

    @property
    def coach(self) -> Coach:
        assert self._coach is not None, "the coach has not started"
        return self._coach

    async def start(self, ctx: Context) -> None:
        """At start, answers left `streaming` by a node that died are failed (their lease ran
        out), then the sweep repeats (a live node's answers keep their lease fresh, saved
        every save interval)."""
        self._coach = Coach(self.settings, ctx.db, ctx.hub, self.background)
        self._prompts = PromptBuilder(ctx.db, system_prompt_of(self.settings),
                                      self.settings.coach_prompt_budget)
        try:
            await self._coach.sweep()
        except Exception:
            log.warning("could not sweep stale coach answers at start", exc_info=True)
        loop = asyncio.get_running_loop()
        self._keepers = [loop.create_task(self._coach.keep_sweeping()),
                         loop.create_task(self._coach.keep_saving())]

    async def drain(self) -> None:
        """The sweep stops first; saves go on while the answers finish within the grace."""
        await self._stop_keepers(self._keepers[:1])
        await self.background.drain(shutdown_grace(self.settings))

    async def close(self) -> None:
        await self._stop_keepers(self._keepers)
        if self._coach is not None:
            await self._coach.close()

    async def _stop_keepers(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def prompt_for(self, user_id: str, question: dict[str, Any]) -> Callable[
            [], Awaitable[list[dict[str, str]]]]:
        assert self._prompts is not None
        return partial(self._prompts.build, user_id, question)


async def ask(service: CoachService, ctx: Context, who: Principal,
              params: dict[str, Any]) -> dict[str, Any]:
    """`coach.ask {"text"}` → `{"message_id", "reply_id"}` at once; the answer streams."""
    if who.role not in ("athlete", "device"):
        raise deny("only athletes (and their devices) ask their coach")
    text = params.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_QUESTION_CHARS:
        raise bad_request(f"text: must be a string of 1 to {MAX_QUESTION_CHARS} characters")
    coach = service.coach
    if not coach.configured:
        raise ReplyError(NOT_CONFIGURED)
    if service.background.draining:
        raise ReplyError(STOPPING)
    settings = service.settings
    try:
        question, answer, interrupted = await coach_queries.begin_ask(
            ctx.db, who.user, text, lease=settings.coach_lease,
            per_minute=settings.coach_asks_per_minute)
    except coach_queries.TooManyAsks as exc:
        raise ReplyError(ErrorCode.TOO_MANY_REQUESTS.with_message(
            f"at most {exc.limit} questions a minute (HUB_COACH_ASKS_PER_MINUTE): "
            "ask again shortly")) from None
    except coach_queries.AnswerInProgress as exc:
        raise ReplyError(ErrorCode.LIMIT_EXCEEDED.with_message(
            f"the coach is still answering (reply {exc.reply_id}): wait for it or "
            "coach.cancel it")) from None
    except Exception:
        log.warning("could not store the question of %s", who.user, exc_info=True)
        raise ReplyError(DATABASE_UNAVAILABLE) from None
    reply_id = answer["message_id"]
    await coach.announce_interrupted(interrupted)
    try:
        await coach.publish(who.user, {"type": "message", **question, "reply_id": reply_id})
    except Exception:  # stored already; the answer still streams and is in coach.history
        log.warning("could not publish the question of %s", who.user, exc_info=True)
    try:
        coach.start_answer(who.user, question, reply_id, service.prompt_for(who.user, question))
    except RuntimeError:  # the node began stopping meanwhile: the question stays, answered failed
        await coach_queries.finish_answer(ctx.db, reply_id, "failed")
        raise ReplyError(STOPPING) from None
    return {"message_id": question["message_id"], "reply_id": reply_id}


async def cancel(service: CoachService, ctx: Context, who: Principal,
                 params: dict[str, Any]) -> dict[str, Any]:
    """`coach.cancel {"reply_id"}` → `{"cancelled": bool}`; only the asker may."""
    reply_id = params.get("reply_id")
    if not isinstance(reply_id, str) or not reply_id:
        raise bad_request("reply_id: must be a non-empty string")
    stored = await coach_queries.get_answer(ctx.db, reply_id)
    if stored is None or stored["user_id"] != who.user or who.role not in ("athlete", "device"):
        raise deny("only the athlete who asked cancels an answer")
    coach = service.coach
    running = coach.running.get(reply_id)
    if running is not None:
        return {"cancelled": await running.cancel()}
    if stored["status"] != "streaming":
        return {"cancelled": False}
    # Streaming on another node: end it in the database, exactly once; that node stops at
    # its next save and announces it, unless it is dead.
    ended = await coach_queries.cancel_elsewhere(ctx.db, reply_id, service.settings.coach_lease)
    if ended is None:
        return {"cancelled": False}
    if ended["announce"]:
        await coach.publish(who.user, {"type": "cancelled", "reply_id": reply_id,
                                       "message_id": ended["reply_to"], "text": ended["text"]})
    else:
        try:
            await ctx.hub.send_to_nodes({"coach_cancelled": reply_id})
        except Exception:  # the streaming node still stops at its next save
            log.warning("could not tell the nodes answer %s was cancelled", reply_id,
                        exc_info=True)
    return {"cancelled": True}


async def history(service: CoachService, ctx: Context, who: Principal,
                  params: dict[str, Any]) -> dict[str, Any]:
    """`coach.history {"user_id"?, "limit"?, "before"?}` → `{"messages"}`, newest last.

    A `streaming` answer carries its text so far and `deltas`: how many of its `delta`
    publications that text holds, so a client continues from the delta with that index."""
    user_id = params.get("user_id") or who.user
    if not isinstance(user_id, str):
        raise bad_request("user_id: must be a string")
    before = params.get("before")
    if before is not None and (not isinstance(before, str) or not before):
        raise bad_request("before: must be a message_id")
    if not await ctx.may_watch(who, user_id):
        raise deny()
    limit = optional_limit(params, default=HISTORY_PAGE)
    return {"messages": await queries.coach_history(ctx.db, user_id, limit, before)}


def rpc(service: CoachService) -> dict[str, Callable[
        [Context, Principal, dict[str, Any]], Awaitable[dict[str, Any]]]]:
    return {"coach.ask": partial(ask, service), "coach.cancel": partial(cancel, service),
            "coach.history": partial(history, service)}


__all__ = ["CoachRule", "CoachService", "coach_channel", "rpc"]
