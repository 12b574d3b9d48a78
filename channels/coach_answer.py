"""A coach answer streamed from the model to every watcher of `coach:<user_id>`.

Each answer is one `Answer.run` task, owned by the application's `BackgroundWork`, and that
task alone publishes the answer: deltas leave in the order the model sent them and can never
overtake one another. The same task reads the model's stream (`coach_model.read_answer`) and
publishes each read's text as it comes, so one window costs one wake-up. The text so far goes
to the database every `HUB_COACH_SAVE_INTERVAL`, for every answer this node streams in one
statement (`Coach.keep_saving`), which also renews their leases (see `models.coach_queries`).

Coalescing (`HUB_COACH_COALESCE_MS`): what the model sent since the last delta goes out as one
`delta`, never sooner than one window after the one before (the read after a delta waits one
window), so a fast model costs one publication per window; text that arrives after a quiet
spell goes out at once.

Invariant for clients: the `delta` texts (`index` 0, 1, …) concatenate to the `text` of the
answer's terminal publication (`done`, `cancelled` or `error`) and to the stored text; a
`streaming` answer's stored text is the concatenation of its first `deltas` deltas, so a client
whose channel history lost the start reads it from `coach.history` and appends the deltas from
that index on.

How an answer ends, exactly once (each final write is conditional on the row still streaming,
and a failed one is tried again for up to half a lease, `Answer._store_final`):
`done`; `cancelled` (`coach.cancel`: the model's stream is closed at once); `failed` with a
short reason and `retryable` (a model error, a stall, a broken stream, the node stopping). A
save that finds the row no longer streaming stops the answer: when it was cancelled through
another node, this task stores the full text and publishes `cancelled` after its last delta
(`coach_queries.settle_cancel`); when it was failed as dead (its lease ran out while the
database was unreachable, say), the sweep announced it and nothing more is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from channels.coach_model import (
    FAILURE_KINDS,
    Done,
    Failed,
    failure_of,
    model_client,
    read_answer,
)
from hub.config import Settings
from hub.rules import BackgroundWork, HubAPI
from models import coach_queries
from models.db import Database

log = logging.getLogger("channels.coach")

NOTIFICATION_TEXT_CHARS = 200
"""A notification carries at most this much of the answer."""
FINAL_WRITE_FIRST_PAUSE = 0.1
FINAL_WRITE_MAX_PAUSE = 1.0
"""Seconds between attempts at an answer's final write while the database fails."""


def coach_channel(user_id: str) -> str:
    return f"coach:{user_id}"


@dataclass(frozen=True, slots=True)
class Cancelled:
    elsewhere: bool = False
    """Cancelled through another node, which left the announcement to us."""


@dataclass(frozen=True, slots=True)
class Lost:
    """The row stopped being `streaming` under us: someone else ended this answer."""


class _Stopped(Exception):
    """Unwinds the model's stream after a publication when the answer was stopped meanwhile."""


Outcome = Done | Cancelled | Failed | Lost
PromptSource = Callable[[], Awaitable[list[dict[str, str]]]]


class Coach:
    """The answers this node streams, by reply id, and what they need to run."""

    def __init__(self, settings: Settings, db: Database, hub: HubAPI,
                 background: BackgroundWork) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.background = background
        self.running: dict[str, Answer] = {}
        self.client = model_client(settings)
        metrics = hub.metrics
        metrics.coach_streaming.set_function(lambda: len(self.running))
        for status in ("done", "cancelled", "failed"):
            metrics.coach_answers.labels(status)
        for kind in FAILURE_KINDS:
            metrics.coach_failures.labels(kind)

    @property
    def configured(self) -> bool:
        return self.client is not None

    def start_answer(self, user_id: str, question: dict[str, Any], reply_id: str,
                     messages_of: PromptSource) -> Answer:
        """Run the answer as application-owned background work; RuntimeError when the node is
        stopping (nothing runs then)."""
        answer = Answer(self, user_id, question["message_id"], reply_id, messages_of)
        self.background.spawn(answer.run())
        self.running[reply_id] = answer
        return answer

    async def publish(self, user_id: str, payload: dict[str, Any]) -> None:
        await self.hub.publish(coach_channel(user_id), orjson.dumps(payload))

    async def announce_interrupted(self, rows: list[dict[str, Any]]) -> None:
        """Tell watchers that answers found dead (their node stopped) have failed."""
        for row in rows:
            with contextlib.suppress(Exception):
                await self.publish(row["user_id"], {
                    "type": "error", "reply_id": row["id"], "message_id": row["reply_to"],
                    "retryable": True, "reason": "the answer was interrupted (the hub restarted)",
                    "text": row["text"]})

    async def sweep(self) -> None:
        """Fail the answers whose lease ran out, wherever they were streaming."""
        await self.announce_interrupted(
            await coach_queries.fail_stale_answers(self.db, self.settings.coach_lease))

    async def keep_saving(self) -> None:
        """Every save interval, store the text so far of every answer streaming here, renewing
        their leases, in one statement; an answer whose row stopped streaming is stopped."""
        while True:
            await asyncio.sleep(self.settings.coach_save_interval)
            answers = [a for a in self.running.values() if a.streaming]
            if not answers:
                continue
            try:
                kept = await coach_queries.save_partials(
                    self.db, [(a.reply_id, a.text, a.deltas) for a in answers])
            except Exception:
                log.warning("could not save %d coach answers", len(answers), exc_info=True)
                continue
            for answer in answers:
                if answer.reply_id not in kept and answer.streaming:
                    await answer.row_lost()

    async def keep_sweeping(self) -> None:
        """Sweep every half lease: an answer whose node died is failed within 1.5 leases."""
        while True:
            await asyncio.sleep(self.settings.coach_lease / 2)
            try:
                await self.sweep()
            except Exception:
                log.warning("could not sweep stale coach answers", exc_info=True)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


class Answer:
    """One answer's task: reads the model's stream and publishes it, in order, then ends it.

    A stop from outside (`cancel`, `row_lost`) interrupts the task only while it waits for the
    model (the request, a read, the window between two reads), which closes the model's stream
    at once. Neither a publication under way (`HubAPI.publish` promises nothing about being
    cancelled part-way, and a delta kept in the text but lost to the watchers would break the
    clients' invariant, module doc) nor the prompt's reads are interrupted: the stop takes
    effect after."""

    def __init__(self, coach: Coach, user_id: str, question_id: str, reply_id: str,
                 messages_of: PromptSource) -> None:
        self.coach = coach
        self.user_id = user_id
        self.question_id = question_id
        self.reply_id = reply_id
        self._messages_of = messages_of
        """An awaitable factory of the prompt, built inside the task (the RPC returns first)."""
        self._parts: list[str] = []
        self._task: asyncio.Task[Any] | None = None
        self._waiting_for_model = False
        """The task is awaiting the model: a stop may interrupt it."""
        self._stop: Cancelled | Lost | None = None
        """Why the answer was stopped from outside, once."""
        self._terminal: Outcome | None = None
        loop = asyncio.get_running_loop()
        self._finished: asyncio.Future[str | None] = loop.create_future()
        self._started_at = loop.time()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def deltas(self) -> int:
        return len(self._parts)

    @property
    def streaming(self) -> bool:
        """Still publishing: a save of its text may still be wanted."""
        return self._terminal is None

    async def cancel(self) -> bool:
        """Close the model's stream and end the answer as `cancelled`; False when it had
        already ended (or was stopped before)."""
        if self._terminal is not None or self._stop is not None:
            return False
        self._request_stop(Cancelled())
        return await asyncio.shield(self._finished) == "cancelled"

    def _request_stop(self, why: Cancelled | Lost) -> None:
        self._stop = why
        if self._waiting_for_model and self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        status: str | None = None
        metrics = self.coach.hub.metrics
        try:
            self._terminal = await self._stream()
            if isinstance(self._terminal, Failed):
                metrics.coach_failures.labels(self._terminal.kind).inc()
            status = await self._finish(self._terminal)
            if status is not None:
                metrics.coach_answers.labels(status).inc()
        finally:
            self.coach.running.pop(self.reply_id, None)
            if not self._finished.done():
                self._finished.set_result(status)

    async def _stream(self) -> Outcome:
        """Read the model's stream and publish it to its outcome."""
        coach = self.coach
        assert coach.client is not None
        try:
            messages = await self._messages_of()
            if self._stop is not None:
                return self._stop
            self._waiting_for_model = True
            try:
                return await read_answer(coach.client, coach.settings, messages,
                                         self._publish_delta)
            finally:
                self._waiting_for_model = False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if self._stop is not None:
                return self._stop
            # The node is stopping and its grace period is over (BackgroundWork.drain).
            return Failed("the hub restarted mid-answer", retryable=True, kind="stopping")
        except _Stopped:
            assert self._stop is not None
            return self._stop
        except Exception as exc:  # noqa: BLE001 - whatever the model API did ends the answer
            return failure_of(exc, started=bool(self._parts),
                              stall_timeout=coach.settings.coach_stall_timeout)

    async def _publish_delta(self, text: str) -> None:
        """Publish the next delta (`read_answer` paces them by the window); raises `_Stopped`
        once it has gone out if the answer was stopped meanwhile."""
        self._waiting_for_model = False
        index = len(self._parts)
        if index == 0:
            self.coach.hub.metrics.coach_first_delta.observe(
                asyncio.get_running_loop().time() - self._started_at)
        self._parts.append(text)
        await self.coach.publish(self.user_id, {"type": "delta", "reply_id": self.reply_id,
                                                "index": index, "text": text})
        if self._stop is not None:
            raise _Stopped
        self._waiting_for_model = True

    # -- saving and finishing -----------------------------------------------------------------

    async def row_lost(self) -> None:
        """A save found the row no longer streaming: it was cancelled through another node
        (this task then announces it) or failed as dead; stop reading the model."""
        elsewhere = False
        with contextlib.suppress(Exception):
            stored = await coach_queries.get_answer(self.coach.db, self.reply_id)
            elsewhere = bool(stored and stored["status"] == "cancelled")
        if self._terminal is None and self._stop is None:
            self._request_stop(Cancelled(elsewhere=True) if elsewhere else Lost())

    async def _finish(self, outcome: Outcome) -> str | None:
        """Store the final status once and publish it; returns that status (None if lost)."""
        if isinstance(outcome, Lost):
            return None
        coach, text = self.coach, self.text
        base = {"reply_id": self.reply_id, "message_id": self.question_id, "text": text}
        payload: dict[str, Any]
        if isinstance(outcome, Done):
            status = "done"
            payload = {"type": "done", **base, "usage": outcome.usage,
                       "finish_reason": outcome.finish_reason}
        elif isinstance(outcome, Cancelled):
            status = "cancelled"
            payload = {"type": "cancelled", **base}
        else:
            status = "failed"
            payload = {"type": "error", **base, "retryable": outcome.retryable,
                       "reason": outcome.reason}
            if outcome.retry_after is not None:
                payload["retry_after"] = outcome.retry_after
        async def store() -> bool:
            if isinstance(outcome, Cancelled) and outcome.elsewhere:
                return await coach_queries.settle_cancel(coach.db, self.reply_id, text,
                                                         len(self._parts))
            return await coach_queries.finish_answer(
                coach.db, self.reply_id, status, text=text, deltas=len(self._parts),
                finish_reason=outcome.finish_reason if isinstance(outcome, Done) else None,
                usage=outcome.usage if isinstance(outcome, Done) else None) is not None

        if not await self._store_final(store, status, text):
            return None  # ended elsewhere first and announced there, or left to the sweep
        try:
            await coach.publish(self.user_id, payload)
            await self._notify_if_unwatched(status, text)
        except Exception:
            log.warning("could not announce coach answer %s", self.reply_id, exc_info=True)
        return status

    async def _store_final(self, store: Callable[[], Awaitable[bool]], status: str,
                           text: str) -> bool:
        """Run the answer's final write, which is conditional on the row still streaming;
        True when it is ours to announce. A write that fails is tried again, with growing
        pauses, for up to half a lease: the row's lease, last renewed at most a save interval
        before the answer ended (a save interval is at most half a lease), cannot run out
        meanwhile, so no sweep fails it under us. A retry that finds the row no longer
        streaming reads it: stored with our status and text, the earlier attempt committed
        before failing. Past half a lease the row is left `streaming`: the sweep fails it and
        announces that, once, as for an answer whose node died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.coach.settings.coach_lease / 2
        pause, retried = FINAL_WRITE_FIRST_PAUSE, False
        while True:
            try:
                if await store():
                    return True
                if not retried:
                    return False
                stored = await coach_queries.get_answer(self.coach.db, self.reply_id)
                return bool(stored and stored["status"] == status and stored["text"] == text)
            except Exception:
                if loop.time() + pause > deadline:
                    log.warning("could not store coach answer %s; the sweep will fail it",
                                self.reply_id, exc_info=True)
                    return False
                log.warning("could not store coach answer %s, trying again in %.1f s",
                            self.reply_id, pause, exc_info=True)
            await asyncio.sleep(pause)
            pause, retried = min(pause * 2, FINAL_WRITE_MAX_PAUSE), True

    async def _notify_if_unwatched(self, status: str, text: str) -> None:
        """No connection of the user watches `coach:`: tell them on `user:<id>`."""
        present = await self.coach.hub.presence(coach_channel(self.user_id))
        if any(info.user == self.user_id for info in present.values()):
            return
        short = text if len(text) <= NOTIFICATION_TEXT_CHARS else (
            text[:NOTIFICATION_TEXT_CHARS - 1] + "…")
        await self.coach.hub.publish(f"user:{self.user_id}", orjson.dumps({
            "type": "notification", "kind": "coach_answer", "reply_id": self.reply_id,
            "message_id": self.question_id, "status": status, "text": short}))
