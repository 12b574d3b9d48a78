"""Watching the coach from phones that switch networks and apps closed and reopened: a
reconnecting client recovers the missed deltas from channel history, one whose channel
history no longer reaches the answer's start reads the prefix from `coach.history`, and an
answer nobody watched is announced on `user:<id>`."""

from __future__ import annotations

import asyncio
from typing import Any

from hub.protocol.codes import DisconnectCode
from tests.app_helpers import rpc, subscribe
from tests.coach_helpers import CoachHub, deltas, until_terminal
from tests.conftest import ConnectClient
from tests.harness import eventually
from tests.llm_server import Behaviour, LLMServer

LONG = Behaviour(text=" ".join(f"word{i}" for i in range(60)), tokens_per_second=20)


async def test_a_client_reconnecting_mid_answer_recovers_the_missed_deltas(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub()
    llm.script(LONG)
    ann, client_events = await connect("ann", target=hub, min_reconnect_delay=0.3,
                                       max_reconnect_delay=0.5)
    _, events = await subscribe(ann, "coach:ann", recoverable=True)
    asked = await rpc(ann, "coach.ask", {"text": "Long answer please"})
    await eventually(lambda: len(deltas(events, asked["reply_id"])) >= 5)

    for client in list(hub.node.clients["ann"]):  # the phone changes networks
        client.close(DisconnectCode.FORCE_RECONNECT)
    await eventually(lambda: len(client_events.named("connected")) == 2)
    done = await until_terminal(events, asked["reply_id"])

    resubscribed = events.named("subscribed")[1]
    assert resubscribed.was_recovering is True and resubscribed.recovered is True
    streamed = deltas(events, asked["reply_id"])
    assert [d["index"] for d in streamed] == list(range(len(streamed)))
    assert "".join(d["text"] for d in streamed) == done["text"] == LONG.text


async def test_a_client_whose_channel_history_lost_the_start_resumes_from_coach_history(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub(coach_history_ttl=1.0)
    llm.script(LONG)
    ann, _ = await connect("ann", target=hub)
    asked = await rpc(ann, "coach.ask", {"text": "Long answer please"})
    reply = asked["reply_id"]

    async def saved_past_history() -> dict[str, Any] | None:
        answer = (await rpc(ann, "coach.history"))["messages"][-1]
        return answer if answer["status"] == "streaming" and answer["deltas"] >= 30 else None

    while await saved_past_history() is None:  # about 1.5 s in: the start has left history
        await asyncio.sleep(0.1)

    tablet, _ = await connect("ann", "device", device="tablet", target=hub)
    sub, events = await subscribe(tablet, "coach:ann")
    retained = [p.data for p in (await sub.history(limit=-1)).publications]
    answer = (await rpc(tablet, "coach.history"))["messages"][-1]
    done = await until_terminal(events, reply)

    first_retained = next(p["index"] for p in retained if p["type"] == "delta")
    assert first_retained > 0  # the channel alone cannot rebuild the answer
    assert answer["status"] == "streaming" and answer["deltas"] >= first_retained
    # History read after subscribing may repeat a live delta: the index tells them apart.
    rest = {d["index"]: d["text"] for d in [*retained, *events.publications()]
            if d["type"] == "delta" and d["index"] >= answer["deltas"]}
    assert sorted(rest) == list(range(answer["deltas"], answer["deltas"] + len(rest)))
    assert answer["text"] + "".join(rest[i] for i in sorted(rest)) == done["text"] == LONG.text


async def test_an_answer_nobody_watched_is_announced_to_the_users_connections(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    hub = await coach_hub()
    llm.default = Behaviour(text="Hydrate well.")
    ann, user_events = await connect("ann", target=hub)  # subscribed to user:ann by the server
    sub, coach_events = await subscribe(ann, "coach:ann")
    watched = await rpc(ann, "coach.ask", {"text": "While I watch"})
    await until_terminal(coach_events, watched["reply_id"])
    await sub.unsubscribe()

    async def watchers() -> dict[str, Any]:
        async with hub.api() as api:
            body = (await api.get("/api/channels/coach:ann/presence")).json()
        presence: dict[str, Any] = body["presence"]
        return presence

    while await watchers():
        await asyncio.sleep(0.05)

    unwatched = await rpc(ann, "coach.ask", {"text": "While I do not"})

    def notifications() -> list[dict[str, Any]]:
        return [p for p in user_events.publications() if p.get("type") == "notification"]

    await eventually(notifications)
    assert notifications() == [{"type": "notification", "kind": "coach_answer",
                                "reply_id": unwatched["reply_id"],
                                "message_id": unwatched["message_id"], "status": "done",
                                "text": "Hydrate well."}]
