"""The coach on two nodes sharing Redis and PostgreSQL, as deployed: every watcher sees one
stream whichever node they are on, a cancel on either node ends it, and "nobody watched" is
asked of Redis presence."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.app_helpers import link, reply_error, rpc, subscribe
from tests.coach_helpers import CoachHub, deltas, long_answer_three_deltas_in, until_terminal
from tests.conftest import ConnectClient
from tests.db_fixtures import create_postgres_database, drop_postgres_database
from tests.harness import RunningHub, eventually
from tests.llm_server import Behaviour, LLMServer

SHARED_REDIS = "redis://127.0.0.1:6379"


@pytest.fixture
async def two_nodes(coach_hub: CoachHub) -> AsyncIterator[list[RunningHub]]:
    async with nodes_on_redis(coach_hub) as nodes:
        yield nodes


@contextlib.asynccontextmanager
async def nodes_on_redis(coach_hub: CoachHub, **overrides: Any) -> AsyncIterator[list[RunningHub]]:
    prefix = f"fitsync-test-coach-{uuid.uuid4().hex[:10]}"
    database = await create_postgres_database()
    nodes: list[RunningHub] = []
    try:
        for _ in range(2):
            nodes.append(await coach_hub(database, redis_url=SHARED_REDIS, redis_prefix=prefix,
                                         **overrides))
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
        client = aioredis.from_url(SHARED_REDIS)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await drop_postgres_database(database)


async def test_watchers_on_both_nodes_see_one_stream_and_a_cancel_on_either_ends_it(
        two_nodes: list[RunningHub], llm: LLMServer, connect: ConnectClient) -> None:
    node_a, node_b = two_nodes
    await link(node_a, "kim", "ann")
    llm.script(Behaviour(text="Three sets of five, then rest.", tokens_per_second=40),
               Behaviour(text=" ".join(["more"] * 300), tokens_per_second=20))
    phone, _ = await connect("ann", target=node_a)
    trainer, _ = await connect("kim", "trainer", target=node_b)
    _, on_a = await subscribe(phone, "coach:ann")
    _, on_b = await subscribe(trainer, "coach:ann")

    first = await rpc(phone, "coach.ask", {"text": "Plan?"})
    done = await until_terminal(on_b, first["reply_id"])
    await until_terminal(on_a, first["reply_id"])
    assert on_a.publications() == on_b.publications()
    assert "".join(d["text"] for d in deltas(on_b, first["reply_id"])) == done["text"]

    second = await rpc(phone, "coach.ask", {"text": "Explain at length"})
    await eventually(lambda: len(deltas(on_b, second["reply_id"])) >= 3)
    tablet, _ = await connect("ann", "device", device="tablet", target=node_b)
    assert (await reply_error(rpc(tablet, "coach.ask", {"text": "Also"}))).code == 106
    assert await rpc(tablet, "coach.cancel", {"reply_id": second["reply_id"]}) == {
        "cancelled": True}
    cancelled = await until_terminal(on_b, second["reply_id"])
    assert cancelled["type"] == "cancelled"
    for events in (on_a, on_b):
        await until_terminal(events, second["reply_id"])
        assert events.publications()[-1] == cancelled
        assert "".join(d["text"] for d in deltas(events, second["reply_id"])) == (
            cancelled["text"])


async def test_a_cancel_on_another_node_reaches_the_streaming_node_at_once_not_at_its_save(
        coach_hub: CoachHub, llm: LLMServer, connect: ConnectClient) -> None:
    """Saves a minute apart: only the node-to-node message can stop the answer in time."""
    async with nodes_on_redis(coach_hub, coach_save_interval=60.0, coach_lease=300.0) as nodes:
        node_a, node_b = nodes
        on_a, reply_id = await long_answer_three_deltas_in(connect, llm, node_a)

        laptop, _ = await connect("ann", target=node_b)
        assert await rpc(laptop, "coach.cancel", {"reply_id": reply_id}) == {"cancelled": True}
        cancelled = await until_terminal(on_a, reply_id, timeout=15)
        assert cancelled["type"] == "cancelled" and on_a.publications()[-1] == cancelled
        assert cancelled["text"] == "".join(d["text"] for d in deltas(on_a, reply_id))
        request = llm.requests[0]
        await eventually(lambda: request.closed_by_client_at is not None)
        answer = (await rpc(laptop, "coach.history"))["messages"][-1]
        assert (answer["status"], answer["text"]) == ("cancelled", cancelled["text"])


async def test_the_answer_is_announced_only_when_no_connection_of_the_user_watched(
        two_nodes: list[RunningHub], llm: LLMServer, connect: ConnectClient) -> None:
    node_a, node_b = two_nodes
    llm.default = Behaviour(text="Sleep eight hours.")
    phone, phone_events = await connect("ann", target=node_a)
    laptop, _ = await connect("ann", target=node_b)
    watching, laptop_coach = await subscribe(laptop, "coach:ann")  # on the other node

    watched = await rpc(phone, "coach.ask", {"text": "Recovery?"})
    await until_terminal(laptop_coach, watched["reply_id"])
    await watching.unsubscribe()

    async def watchers() -> dict[str, Any]:
        async with node_a.api() as api:
            body = (await api.get("/api/channels/coach:ann/presence")).json()
        presence: dict[str, Any] = body["presence"]
        return presence

    while await watchers():
        await asyncio.sleep(0.05)
    unwatched = await rpc(phone, "coach.ask", {"text": "And now?"})

    def notifications() -> list[dict[str, Any]]:
        return [p for p in phone_events.publications() if p.get("type") == "notification"]

    await eventually(notifications)
    assert [(n["reply_id"], n["status"]) for n in notifications()] == [
        (unwatched["reply_id"], "done")]
