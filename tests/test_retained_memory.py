"""What the node keeps for later (channel history, a lagging connection's queue) costs about
its encoded size in memory, not the serializer's working buffer, and retained history is
nothing the garbage collector has to walk."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import orjson

from hub.broker.base import ClientInfo, HistoryOptions
from hub.broker.memory import MemoryBroker
from hub.protocol.json_codec import JsonCodec

COUNT = 2000
EVENT = {"type": "set", "event_id": "watch-1", "exercise": "squat", "reps": 5, "weight_kg": 60}


def traced_bytes_per_item(make: Callable[[int], object]) -> float:
    """Memory still allocated per item after making `COUNT` of them and keeping them."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(i) for i in range(COUNT)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == COUNT
    return (after - before) / COUNT


async def test_history_keeps_about_the_publication_size_per_publication() -> None:
    broker = MemoryBroker()
    history = HistoryOptions(size=COUNT, ttl=60, meta_ttl=600)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(COUNT):
            payload = orjson.dumps({**EVENT, "event_id": f"watch-{i}"})
            await broker.publish("session:s1", payload, history=history)
        del payload
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # ~100 bytes of data plus the publication and its history entry; orjson's own buffer
    # would be over 4,000.
    assert (after - before) / COUNT < 600


async def test_retained_history_is_not_tracked_by_the_garbage_collector() -> None:
    """Every collection of an older generation walks what it tracks: history held as objects
    (200 sessions × 1,000 publications) made one take 138 ms, a pause for every connection."""
    broker = MemoryBroker()
    history = HistoryOptions(size=COUNT, ttl=60, meta_ttl=600)
    info = ClientInfo(user="ann", client="c1", conn_info=b'{"device":"watch"}')
    for i in range(COUNT):
        payload = orjson.dumps({**EVENT, "event_id": f"watch-{i}"})
        await broker.publish("session:s1", payload, info=info, history=history)
    await broker.publish("session:s1", b"{}", history=history, tags={"kind": "set"})
    gc.collect()
    entries = broker._streams["session:s1"].entries  # what the broker retains, as it holds it
    assert len(entries) == COUNT
    assert [e for e in list(entries)[:-1] if gc.is_tracked(e)] == []
    # What history hands out is whole again.
    found = await broker.history("session:s1", since=None, limit=2, reverse=True)
    assert [(p.info, p.tags) for p in found.publications] == [(None, {"kind": "set"}), (info, None)]


def test_json_encoding_keeps_about_the_encoded_size() -> None:
    codec = JsonCodec()
    per_message = traced_bytes_per_item(lambda i: codec.encode({"id": i, "publish": {}}))
    assert per_message < 200


async def test_a_channel_nobody_published_to_keeps_only_its_position() -> None:
    """Every connect reads its user channel's position, so every connected user has a stream
    with an epoch and no publications: ~150 bytes of it, not an empty deque's 600 more."""
    broker = MemoryBroker()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(COUNT):
            await broker.history(f"user:u{i}", limit=0)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (after - before) / COUNT < 450
    history = HistoryOptions(size=10, ttl=60, meta_ttl=600)
    await broker.publish("user:u1", b"{}", history=history)
    assert len(broker._streams["user:u1"].entries) == 1
    assert len(broker._streams["user:u2"].entries) == 0
