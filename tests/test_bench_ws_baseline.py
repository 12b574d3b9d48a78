"""The fan-out bench's node `ws` baseline: every publication reaches every subscriber, acked."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# bench/ is a directory of scripts, not a package; its modules import each other by name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from publisher import BaselinePublisher
from servers import start_ws_baseline, wait_healthy
from wsclient import open_websocket

from tests.harness import eventually


async def test_the_ws_baseline_sends_each_publication_to_every_subscriber() -> None:
    server = await asyncio.to_thread(start_ws_baseline, 0)
    try:
        await asyncio.to_thread(wait_healthy, server)
        received: list[list[bytes]] = [[], []]
        subscribers = [
            await open_websocket(
                "127.0.0.1", server.port, "/", lambda m, _t, box=box: box.append(m)
            )
            for box in received
        ]
        publisher = BaselinePublisher("127.0.0.1", server.port)
        await publisher.warm_up()
        for n in range(3):
            assert await publisher.publish(b'{"s":%d}' % n)
        await eventually(lambda: all(len(box) == 3 for box in received))
        assert received[0] == received[1] == [b'{"s":0}', b'{"s":1}', b'{"s":2}']
        await publisher.aclose()
        for subscriber in subscribers:
            subscriber.abort()
    finally:
        await asyncio.to_thread(server.stop)
