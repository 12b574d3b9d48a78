"""The AI coach through official SDK clients against a scripted OpenAI-compatible server:
answers stream in order to every watcher, and end exactly once as done, cancelled or failed."""

from __future__ import annotations

import pytest

from tests.app_helpers import link, reply_error, rpc, subscribe
from tests.coach_helpers import CoachHub, coach_hub, deltas, llm, until_terminal  # noqa: F401
from tests.conftest import ConnectClient
from tests.llm_server import PRESETS, Behaviour, LLMServer, tokens_of

ANSWER = "Squat depth looks good. Add 2.5 kg next week and keep resting three minutes."


async def test_answer_streams_as_ordered_deltas_that_concatenate_to_the_answer(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub()
    llm.script(Behaviour(text=ANSWER, tokens_per_second=100))
    ann, _ = await connect("ann", target=hub)
    _, events = await subscribe(ann, "coach:ann")

    asked = await rpc(ann, "coach.ask", {"text": "How was my squat?"})
    done = await until_terminal(events, asked["reply_id"])

    pubs = events.publications()
    assert pubs[0] == {"type": "message", "message_id": asked["message_id"], "role": "user",
                       "text": "How was my squat?", "status": "done",
                       "created_at": pubs[0]["created_at"], "reply_id": asked["reply_id"]}
    streamed = deltas(events, asked["reply_id"])
    assert [d["index"] for d in streamed] == list(range(len(streamed)))
    assert "".join(d["text"] for d in streamed) == ANSWER
    assert done == {"type": "done", "reply_id": asked["reply_id"],
                    "message_id": asked["message_id"], "text": ANSWER,
                    "finish_reason": "stop", "usage": done["usage"]}
    assert done["usage"]["completion_tokens"] == len(tokens_of(ANSWER))

    history = (await rpc(ann, "coach.history"))["messages"]
    assert [(m["role"], m["text"], m["status"]) for m in history] == [
        ("user", "How was my squat?", "done"), ("assistant", ANSWER, "done")]
    assert history[1]["message_id"] == asked["reply_id"]
    assert history[1]["reply_to"] == asked["message_id"]
