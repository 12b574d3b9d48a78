"""The AI coach through official SDK clients against a scripted OpenAI-compatible server:
answers stream in order to every watcher, and end exactly once as done, cancelled or failed."""

from __future__ import annotations

import contextlib

import pytest

from tests.app_helpers import link, reply_error, rpc, subscribe
from tests.coach_helpers import CoachHub, coach_metrics, deltas, until_terminal
from tests.conftest import ConnectClient
from tests.harness import RunningHub, eventually, free_port
from tests.llm_server import PRESETS, Behaviour, LLMServer, tokens_of, unanswered_port

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


async def test_the_model_api_connection_is_kept_for_the_next_answer_and_dropped_on_cancel(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub()
    llm.script(Behaviour(text=ANSWER, tokens_per_second=200),
               Behaviour(text=ANSWER, tokens_per_second=200),
               Behaviour(text=" ".join(["long"] * 300), tokens_per_second=20),
               Behaviour(text=ANSWER, tokens_per_second=200))
    ann, _ = await connect("ann", target=hub)
    _, events = await subscribe(ann, "coach:ann")
    for question in ("One?", "Two?"):
        asked = await rpc(ann, "coach.ask", {"text": question})
        assert (await until_terminal(events, asked["reply_id"]))["type"] == "done"
    long = await rpc(ann, "coach.ask", {"text": "Three?"})
    await eventually(lambda: len(deltas(events, long["reply_id"])) >= 2)
    assert await rpc(ann, "coach.cancel", {"reply_id": long["reply_id"]}) == {"cancelled": True}
    asked = await rpc(ann, "coach.ask", {"text": "Four?"})
    assert (await until_terminal(events, asked["reply_id"]))["type"] == "done"

    first, second, cancelled, after = (r.connection for r in llm.requests)
    assert first == second == cancelled  # a finished answer leaves its connection reusable
    assert after != cancelled  # a cancelled stream's connection is closed, not reused


async def test_a_trainer_and_a_second_device_watch_the_same_stream(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub()
    await link(hub, "kim", "ann")
    llm.script(Behaviour(text=ANSWER, tokens_per_second=60))
    phone, _ = await connect("ann", target=hub)
    watch, _ = await connect("ann", "device", device="watch-1", target=hub)
    trainer, _ = await connect("kim", "trainer", target=hub)
    watchers = [(await subscribe(c, "coach:ann"))[1] for c in (phone, watch, trainer)]

    asked = await rpc(phone, "coach.ask", {"text": "Rest time?"})
    for events in watchers:
        await until_terminal(events, asked["reply_id"])

    seen = [events.publications() for events in watchers]
    assert seen[0] == seen[1] == seen[2]
    assert "".join(d["text"] for d in deltas(watchers[2], asked["reply_id"])) == ANSWER
    assert len((await rpc(trainer, "coach.history", {"user_id": "ann"}))["messages"]) == 2
    assert (await reply_error(rpc(trainer, "coach.ask", {"text": "hi"}))).code == 103
    outsider, _ = await connect("bob", target=hub)
    assert (await reply_error(rpc(outsider, "coach.history", {"user_id": "ann"}))).code == 103


async def test_cancel_closes_the_model_stream_and_keeps_the_partial_answer_once(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub()
    await link(hub, "kim", "ann")
    llm.script(Behaviour(text=" ".join(["slowly"] * 200), tokens_per_second=20))
    ann, _ = await connect("ann", target=hub)
    _, events = await subscribe(ann, "coach:ann")
    asked = await rpc(ann, "coach.ask", {"text": "Tell me everything"})
    reply = asked["reply_id"]
    await eventually(lambda: len(deltas(events, reply)) >= 3)

    trainer, _ = await connect("kim", "trainer", target=hub)
    bob, _ = await connect("bob", target=hub)
    for other in (trainer, bob):
        assert (await reply_error(rpc(other, "coach.cancel", {"reply_id": reply}))).code == 103
    assert (await coach_metrics(hub))["fitsync_coach_streaming"] == 1.0
    assert await rpc(ann, "coach.cancel", {"reply_id": reply}) == {"cancelled": True}

    request = llm.requests[0]
    await eventually(lambda: request.closed_by_client_at is not None)
    assert not request.completed
    cancelled = await until_terminal(events, reply)
    partial = "".join(d["text"] for d in deltas(events, reply))
    assert cancelled == {"type": "cancelled", "reply_id": reply,
                         "message_id": asked["message_id"], "text": partial}
    assert events.publications()[-1] == cancelled
    assert 0 < len(partial) < len(" ".join(["slowly"] * 200))
    assert await rpc(ann, "coach.cancel", {"reply_id": reply}) == {"cancelled": False}
    answer = (await rpc(ann, "coach.history"))["messages"][-1]
    assert (answer["status"], answer["text"]) == ("cancelled", partial)
    counted = await coach_metrics(hub)
    assert (counted["fitsync_coach_answers_total{status=cancelled}"],
            counted["fitsync_coach_streaming"]) == (1.0, 0.0)

    llm.script(Behaviour(text=ANSWER))
    again = await rpc(ann, "coach.ask", {"text": "Short one then"})
    await until_terminal(events, again["reply_id"])
    assert await rpc(ann, "coach.cancel", {"reply_id": again["reply_id"]}) == {"cancelled": False}
    assert (await reply_error(rpc(ann, "coach.cancel", {"reply_id": "nope"}))).code == 103
    assert (await reply_error(rpc(ann, "coach.cancel", {}))).code == 107


FAILURES = {
    "unauthorized": (PRESETS["unauthorized"], False, "401", "unauthorized"),
    "rate_limited": (PRESETS["rate_limited"], True, "429", "rate_limited"),
    "server_error": (PRESETS["server_error"], True, "500", "model_error"),
    "broken": (PRESETS["broken"], True, "stream broke off", "broken"),
    "error_event": (PRESETS["stream_error"], True, "failed mid-answer", "stream_error"),
    "stalls": (PRESETS["hang"], True, "stopped sending", "stalled"),
    "never_answers": (PRESETS["no_headers"], True, "did not answer within", "no_answer"),
}
"""Each way of failing: the model's behaviour, `retryable`, the reason's words, the metric's
`kind`."""


@pytest.mark.parametrize("name", list(FAILURES))
async def test_a_failing_model_ends_the_answer_with_a_retryable_error_and_the_hub_carries_on(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, name: str) -> None:
    behaviour, retryable, reason, kind = FAILURES[name]
    hub = await coach_hub()
    llm.script(behaviour, Behaviour(text=ANSWER))
    ann, _ = await connect("ann", target=hub)
    _, events = await subscribe(ann, "coach:ann")

    asked = await rpc(ann, "coach.ask", {"text": "Plan my week"})
    error = await until_terminal(events, asked["reply_id"])

    partial = "".join(d["text"] for d in deltas(events, asked["reply_id"]))
    assert error["type"] == "error" and error["retryable"] is retryable
    assert reason in error["reason"] and error["text"] == partial
    if name == "rate_limited":
        assert error["retry_after"] == 20 and "retry in 20 s" in error["reason"]
    if name in ("broken", "error_event", "stalls"):
        assert partial == "".join(tokens_of(behaviour.text)[:5])
    answer = (await rpc(ann, "coach.history"))["messages"][-1]
    assert (answer["status"], answer["text"]) == ("failed", partial)

    again = await rpc(ann, "coach.ask", {"text": "Plan my week, please"})
    assert (await until_terminal(events, again["reply_id"]))["text"] == ANSWER
    counted = await coach_metrics(hub)
    assert {name: value for name, value in counted.items()
            if name.startswith("fitsync_coach_failures_total") and value} == {
        f"fitsync_coach_failures_total{{kind={kind}}}": 1.0}
    assert (counted["fitsync_coach_answers_total{status=failed}"],
            counted["fitsync_coach_answers_total{status=done}"]) == (1.0, 1.0)
    first_deltas = 2.0 if partial else 1.0  # the failed answer's, if it had begun, and the next
    assert counted["fitsync_coach_first_delta_seconds_count"] == first_deltas
    assert counted["fitsync_coach_streaming"] == 0.0


@pytest.mark.parametrize("where", ["connect_timeout", "refused"])
async def test_an_unreachable_model_api_fails_the_answer_retryably(
        coach_hub: CoachHub, connect: ConnectClient, where: str) -> None:
    with contextlib.ExitStack() as stack:
        if where == "connect_timeout":
            port = stack.enter_context(unanswered_port())
        else:
            port = free_port()
        hub = await coach_hub(coach_base_url=f"http://127.0.0.1:{port}/v1")
        ann, _ = await connect("ann", target=hub)
        _, events = await subscribe(ann, "coach:ann")
        asked = await rpc(ann, "coach.ask", {"text": "Anyone there?"})
        error = await until_terminal(events, asked["reply_id"])
    expected = "did not answer in time" if where == "connect_timeout" else "could not reach"
    assert error["retryable"] is True and expected in error["reason"], error
    kind = "no_answer" if where == "connect_timeout" else "unreachable"
    assert (await coach_metrics(hub))[f"fitsync_coach_failures_total{{kind={kind}}}"] == 1.0
    assert (await rpc(ann, "session.start"))["session_id"]
    async with hub.api() as api:
        assert (await api.get("/readyz")).status_code == 200


@pytest.mark.parametrize("text", ["", "   ", "x" * 4001, 5, None])
async def test_a_question_must_be_1_to_4000_characters(
        coach_hub: CoachHub, connect: ConnectClient, text: object) -> None:
    hub = await coach_hub()
    ann, _ = await connect("ann", target=hub)
    error = await reply_error(rpc(ann, "coach.ask", {"text": text}))
    assert error.code == 107 and "text" in error.message
    assert (await rpc(ann, "coach.history"))["messages"] == []


async def test_without_an_api_key_asking_says_how_to_set_one_and_the_rest_works(
        hub: RunningHub, connect: ConnectClient) -> None:
    ann, _ = await connect("ann")
    error = await reply_error(rpc(ann, "coach.ask", {"text": "Hello?"}))
    assert error.code == 108 and "OPENAI_API_KEY" in error.message
    assert (await rpc(ann, "coach.history"))["messages"] == []
    _, events = await subscribe(ann, "coach:ann")
    assert events.named("subscribed")
    assert (await rpc(ann, "session.start"))["session_id"]


async def test_asks_per_minute_are_limited_with_an_error_naming_the_setting(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub(coach_asks_per_minute=2)
    llm.default = Behaviour(text=ANSWER)
    ann, _ = await connect("ann", target=hub)
    _, events = await subscribe(ann, "coach:ann")
    for n in range(2):
        asked = await rpc(ann, "coach.ask", {"text": f"question {n}"})
        await until_terminal(events, asked["reply_id"])
    error = await reply_error(rpc(ann, "coach.ask", {"text": "one more"}))
    assert error.code == 111 and "HUB_COACH_ASKS_PER_MINUTE" in error.message
    bob, _ = await connect("bob", target=hub)
    assert (await rpc(bob, "coach.ask", {"text": "my first"}))["reply_id"]
