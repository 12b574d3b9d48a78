"""The coach's lock and lease in the database: one answer at a time per user across nodes,
answers that outlive a node's stop or crash end `failed`, and nothing stays `streaming`.
Run on SQLite and PostgreSQL; several nodes share one database (each with its own broker)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import centrifuge
import orjson
from sqlalchemy import update

from models import coach_queries
from models.db import Database
from models.tables import coach_messages, utcnow
from tests.app_helpers import connection_switch, reply_error, rpc, subscribe
from tests.coach_helpers import (
    CoachHub,
    coach_pubs,
    deltas,
    long_answer_three_deltas_in,
    terminal,
    until_terminal,
)
from tests.conftest import ConnectClient
from tests.harness import eventually
from tests.llm_server import Behaviour, LLMServer

SLOW = Behaviour(text=" ".join(["steady"] * 40), tokens_per_second=12)
"""About 3.5 s: longer than several leases (1 s) and saves (0.2 s) of the test hubs."""


async def test_one_answer_at_a_time_per_user_across_nodes(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, database_url: str) -> None:
    node_a = await coach_hub(database_url)
    llm.default = SLOW
    ann_a, _ = await connect("ann", target=node_a)
    _, events = await subscribe(ann_a, "coach:ann")
    asked = await rpc(ann_a, "coach.ask", {"text": "First question"})
    await eventually(lambda: deltas(events, asked["reply_id"]))

    node_b = await coach_hub(database_url)  # starting does not fail node A's live answer
    ann_b, _ = await connect("ann", target=node_b)
    busy = await reply_error(rpc(ann_b, "coach.ask", {"text": "Second question"}))
    assert busy.code == 106 and asked["reply_id"] in busy.message
    busy_here = await reply_error(rpc(ann_a, "coach.ask", {"text": "Second question"}))
    assert busy_here.code == 106

    done = await until_terminal(events, asked["reply_id"])
    assert done["type"] == "done" and done["text"] == SLOW.text
    history = (await rpc(ann_b, "coach.history"))["messages"]
    assert [m["text"] for m in history] == ["First question", SLOW.text]
    assert (await rpc(ann_b, "coach.ask", {"text": "Second question"}))["reply_id"]


async def test_of_two_asks_racing_on_two_nodes_exactly_one_wins(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, database_url: str) -> None:
    llm.default = SLOW
    nodes = [await coach_hub(database_url), await coach_hub(database_url)]
    clients = [(await connect("cy", target=node))[0] for node in nodes]
    outcomes = await asyncio.gather(
        *(rpc(c, "coach.ask", {"text": f"from node {i}"}) for i, c in enumerate(clients)),
        return_exceptions=True)
    wins = [o for o in outcomes if isinstance(o, dict)]
    losses = [o for o in outcomes if isinstance(o, centrifuge.ReplyError)]
    assert len(wins) == 1 and [e.code for e in losses] == [106], outcomes
    history = (await rpc(clients[0], "coach.history"))["messages"]
    assert [m["message_id"] for m in history] == [wins[0]["message_id"], wins[0]["reply_id"]]


async def test_a_cancel_on_another_node_stops_the_answer_where_it_streams(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, database_url: str) -> None:
    node_a, node_b = await coach_hub(database_url), await coach_hub(database_url)
    on_a, reply_id = await long_answer_three_deltas_in(connect, llm, node_a)

    ann_b, _ = await connect("ann", target=node_b)
    assert await rpc(ann_b, "coach.cancel", {"reply_id": reply_id}) == {
        "cancelled": True}
    assert await rpc(ann_b, "coach.cancel", {"reply_id": reply_id}) == {
        "cancelled": False}

    cancelled = await until_terminal(on_a, reply_id)  # node A announces it, last
    assert cancelled["type"] == "cancelled" and on_a.publications()[-1] == cancelled
    published = "".join(d["text"] for d in deltas(on_a, reply_id))
    assert cancelled["text"] == published
    request = llm.requests[0]
    await eventually(lambda: request.closed_by_client_at is not None)
    answer = (await rpc(ann_b, "coach.history"))["messages"][-1]
    assert (answer["status"], answer["text"]) == ("cancelled", published)
    assert (await rpc(ann_b, "coach.ask", {"text": "Next"}))["reply_id"]


async def test_a_node_stopping_mid_answer_finishes_it_within_its_grace(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, database_url: str) -> None:
    llm.default = Behaviour(text=" ".join(["nearly"] * 15), tokens_per_second=15)
    node = await coach_hub(database_url, shutdown_timeout=26.0)  # grace (26 - 1 - 5) / 2 = 10 s
    ann, _ = await connect("ann", target=node)
    _, events = await subscribe(ann, "coach:ann")
    asked = await rpc(ann, "coach.ask", {"text": "Quick one"})
    await eventually(lambda: deltas(events, asked["reply_id"]))
    await node.stop()

    after = await coach_hub(database_url)
    ann_again, _ = await connect("ann", target=after)
    answer = (await rpc(ann_again, "coach.history"))["messages"][-1]
    assert (answer["status"], answer["text"]) == ("done", llm.default.text)


async def test_a_node_stopping_past_its_grace_fails_the_answer_retryably(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, database_url: str) -> None:
    llm.default = Behaviour(text=" ".join(["endless"] * 500), tokens_per_second=20)
    node = await coach_hub(database_url, shutdown_timeout=6.6)  # grace 0.3 s
    ann, _ = await connect("ann", target=node)
    _, events = await subscribe(ann, "coach:ann")
    broker = node.node.broker  # what the answer published after its watchers were let go
    asked = await rpc(ann, "coach.ask", {"text": "Long one"})
    await eventually(lambda: len(deltas(events, asked["reply_id"])) >= 2)
    await node.stop()

    stored = (await broker.history("coach:ann", limit=-1)).publications
    last = orjson.loads(stored[-1].data)
    assert last["type"] == "error" and last["retryable"] is True
    assert "restarted" in last["reason"]
    after = await coach_hub(database_url)
    ann_again, _ = await connect("ann", target=after)
    answer = (await rpc(ann_again, "coach.history"))["messages"][-1]
    assert answer["status"] == "failed" and answer["text"] == last["text"]
    assert llm.requests[0].closed_by_client_at is not None


async def test_answers_left_streaming_by_a_crash_are_failed_and_free_the_user(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, database_url: str) -> None:
    db = Database(database_url)
    await db.start()
    try:
        _, long_dead, _ = await coach_queries.begin_ask(db, "ann", "before the crash",
                                                        lease=1.0, per_minute=10)
        async with db.write() as conn:
            await conn.execute(update(coach_messages).values(
                heartbeat_at=utcnow() - timedelta(minutes=5)))
        await coach_queries.begin_ask(db, "bob", "just before the crash", lease=1.0,
                                      per_minute=10)
    finally:
        await db.close()

    node = await coach_hub(database_url, coach_lease=1.0)
    ann, _ = await connect("ann", target=node)
    answer = (await rpc(ann, "coach.history"))["messages"][-1]
    assert (answer["message_id"], answer["status"]) == (long_dead["message_id"], "failed")

    bob, _ = await connect("bob", target=node)
    busy = await reply_error(rpc(bob, "coach.ask", {"text": "again"}))
    assert busy.code == 106  # its lease has not run out yet: it might still be alive

    async def bob_history_status() -> str:
        return str((await rpc(bob, "coach.history"))["messages"][-1]["status"])

    deadline = asyncio.get_running_loop().time() + 10
    while await bob_history_status() != "failed":
        assert asyncio.get_running_loop().time() < deadline, "never failed"
        await asyncio.sleep(0.1)
    assert (await rpc(bob, "coach.ask", {"text": "again"}))["reply_id"]


async def test_an_answer_whose_final_write_fails_is_stored_and_announced_when_it_can_be(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient, postgres_url: str) -> None:
    """The database goes away before an answer ends: the end is not announced while it cannot
    be stored, then stored and announced once, as `done`, when the database is back (within
    half a lease, before any sweep would fail it)."""
    hub = await coach_hub(postgres_url, coach_lease=6.0)
    text = " ".join(["steady"] * 20)
    llm.default = Behaviour(text=text, tokens_per_second=20)
    phone, _ = await connect("ann", target=hub)
    _, events = await subscribe(phone, "coach:ann")
    reply_id = (await rpc(phone, "coach.ask", {"text": "Keep going"}))["reply_id"]
    await eventually(lambda: len(deltas(events, reply_id)) >= 2)

    async with connection_switch(postgres_url) as allow:
        await allow(False)
        # The rest streams without the database; its final write fails and is tried again.
        await eventually(lambda: "".join(d["text"] for d in deltas(events, reply_id)) == text)
        await asyncio.sleep(0.5)
        assert terminal(events, reply_id) is None
        await allow(True)

    done = await until_terminal(events, reply_id)
    assert (done["type"], done["text"]) == ("done", text)
    assert [p["type"] for p in coach_pubs(events, reply_id)].count("done") == 1
    stored = (await rpc(phone, "coach.history"))["messages"][-1]
    assert (stored["message_id"], stored["status"], stored["text"]) == (reply_id, "done", text)
