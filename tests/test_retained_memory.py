"""What the node keeps for later (channel history, a lagging connection's queue) costs about
its encoded size in memory, not the serializer's working buffer."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson

from hub.broker.base import HistoryOptions
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


def test_json_encoding_keeps_about_the_encoded_size() -> None:
    codec = JsonCodec()
    per_message = traced_bytes_per_item(lambda i: codec.encode({"id": i, "publish": {}}))
    assert per_message < 200
