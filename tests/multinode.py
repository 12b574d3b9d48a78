"""Several `fitsync-hub serve` processes sharing a private Redis and one PostgreSQL database,
and official SDK clients connected to whichever node a test names.

Every process (hub nodes, redis-server) is stopped by its PID when the `Cluster` closes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import centrifuge
import httpx

from hub import auth
from tests.harness import API_KEY, SECRET, Recorder
from tests.serve_process import ServedHub, serve


@dataclass
class Node:
    served: ServedHub

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.served.port}/connection/websocket"

    @property
    def http_url(self) -> str:
        return self.served.http_url

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url,
                                 headers={"Authorization": f"apikey {API_KEY}"}, timeout=10)


@dataclass
class Cluster:
    """Hub nodes on one Redis URL (one server, several shards, or a cluster) and one database."""

    env: dict[str, str]
    directory: Path
    nodes: list[Node] = field(default_factory=list)
    clients: list[centrifuge.Client] = field(default_factory=list)

    def start_node(self) -> Node:
        index = len(self.nodes)
        node = Node(serve(self.env, self.directory / f"node{index}.log"))
        self.nodes.append(node)
        return node

    def token(self, user: str, role: str = "athlete", device: str | None = None) -> str:
        return auth.mint(SECRET, user, role, device=device, ttl=3600)

    async def connect(self, node: Node, user: str, role: str = "athlete",
                      device: str | None = None,
                      **options: Any) -> tuple[centrifuge.Client, Recorder]:
        """An SDK client of `user` on `node`; a device token names `device` (default
        `<user>-device`)."""
        events = Recorder()
        if role == "device":
            device = device or f"{user}-device"
        client = centrifuge.Client(node.ws_url, events=events,
                                   token=self.token(user, role, device), **options)
        await client.connect()
        await client.ready(timeout=10)
        self.clients.append(client)
        return client, events

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.disconnect()
        self.clients.clear()

    def stop(self) -> None:
        for node in self.nodes:
            node.served.stop()


def node_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "HUB_REDIS_URL": redis_url,
        "HUB_REDIS_PREFIX": f"fitsync-test-{secrets.token_hex(4)}",
        "HUB_DATABASE_URL": database_url,
        "HUB_JWT_SECRET": SECRET,
        "HUB_API_KEY": API_KEY,
        "HUB_COMMANDS_PER_SECOND": "1000",
        "HUB_REDIS_TIMEOUT": "5",  # a loaded test machine must not look like a Redis outage
        **extra,
    }


@contextmanager
def cluster_of(count: int, env: dict[str, str], directory: Path) -> Iterator[Cluster]:
    cluster = Cluster(env, directory)
    try:
        for _ in range(count):
            cluster.start_node()
        yield cluster
    finally:
        cluster.stop()


async def subscribed(client: centrifuge.Client, channel: str,
                     **options: Any) -> tuple[centrifuge.Subscription, Recorder]:
    events = Recorder()
    sub = client.new_subscription(channel, events=events, **options)
    await sub.subscribe()
    await sub.ready(timeout=10)
    return sub, events


def set_event(event_id: str, reps: int = 5, weight_kg: float = 100) -> dict[str, Any]:
    return {"type": "set", "event_id": event_id, "exercise": "squat", "reps": reps,
            "weight_kg": weight_kg}


async def presence_on(node: Node, channel: str) -> set[str]:
    async with node.api() as api:
        r = await api.get(f"/api/channels/{channel}/presence")
    assert r.status_code == 200, r.text
    return set(r.json()["presence"])
