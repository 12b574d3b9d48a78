"""Cross-node fan-out benchmark: one hub node, two hub nodes sharing Redis, the plain
`websockets` baseline and two `broadcaster` nodes, all under bench/fanout.py's load.

Deployments, in one invocation (`--only` picks some):

* `hub`: one node, in-process broker (the single-node figure every other is compared with);
* `hub+redis`: one node on Redis, which separates the cost of Redis from that of crossing nodes;
* `hub x2`: two nodes on one Redis, subscribers split evenly across them (one subscriber
  process per node), the publisher on node 1 (`POST /api/publish`), so half the deliveries
  cross from node 1 to node 2 through Redis;
* `baseline`: `websockets.broadcast()` on one node (bench/baseline_server.py);
* `broadcaster x2`: two Starlette nodes with the `broadcaster` package on the same Redis
  (bench/broadcaster_server.py), split and published to the same way.

Each deployment gets the same phases as bench/fanout.py (idle connections, a fixed rate, then
as fast as the servers take publishes) and its own private `redis-server` (fresh counters).
Besides fanout's figures it reports, per phase, Redis commands per publication (`INFO
commandstats`: PUBLISH, EVALSHA, and every other command the nodes sent) and Redis CPU per
publication (`INFO cpu`: used_cpu_sys + used_cpu_user), and the CPU of every node and of Redis.

Placement: every server process and Redis share core 0, the load side (this process, the
publisher, the subscriber processes) core 1, as in bench/fanout.py; one node and two nodes are
then compared at the same server CPU. On a machine with more cores, give each node its own
with `--node-cores 0,2` (and Redis `--redis-core 3`).

Run: `.venv/bin/python bench/crossnode.py --json crossnode.json` (or `--quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from fanout import (
    CHANNEL,
    PhaseCpu,
    WorkerPool,
    add_load_options,
    connected_publisher,
    drain,
    environment,
    run_bench,
    summarize,
    wait_quiet,
    warn_if_shared,
    write_report,
)
from loadgen import PHASES
from publisher import Publisher, publish_phase
from servers import (
    BENCH_DIR,
    REPO_ROOT,
    ServerProcess,
    free_port,
    pinned,
    start_hub,
    start_redis,
    wait_healthy,
)

DEPLOYMENTS = ("hub", "hub+redis", "hub x2", "baseline", "broadcaster x2")
SINGLE, CROSS, PEER = "hub", "hub x2", "broadcaster x2"
FIXED = PHASES.index("fixed")
TARGET_P99_RATIO = 1.5
TARGET_PEER_RATIO = 3.0
IGNORED_COMMANDS = {"cmdstat_info"}
"""The benchmark's own `INFO` calls."""


@dataclass
class Deployment:
    """The servers of one deployment: its nodes (publisher on the first), its Redis if any."""

    name: str
    subscriber_kind: str
    """How subscribers speak: `hub` (Centrifuge JSON) or `baseline` (bare frames)."""
    nodes: list[ServerProcess]
    redis_server: ServerProcess | None = None
    redis_client: redis.Redis | None = field(default=None, repr=False)
    scratch: list[Path] = field(default_factory=list)
    """Directories shared by the nodes (their database), removed after they stopped."""

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for directory in self.scratch:
            shutil.rmtree(directory, ignore_errors=True)
        if self.redis_client is not None:
            self.redis_client.close()
        if self.redis_server is not None:
            self.redis_server.stop()

    def cpu_groups(self) -> dict[str, list[int]]:
        from procstat import process_tree

        groups = {f"node{i}": process_tree(n.pid) for i, n in enumerate(self.nodes, 1)}
        if self.redis_server is not None:
            groups["redis"] = [self.redis_server.pid]
        return groups

    def redis_counters(self) -> dict[str, float]:
        """Calls per command and Redis CPU seconds so far (empty without Redis)."""
        if self.redis_client is None:
            return {}
        counters: dict[str, float] = {
            name.removeprefix("cmdstat_"): float(stats["calls"])
            for name, stats in self.redis_client.info("commandstats").items()
            if name not in IGNORED_COMMANDS
        }
        cpu = self.redis_client.info("cpu")
        counters["cpu_s"] = float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])
        return counters


def start_broadcaster(core: int, redis_url: str) -> ServerProcess:
    if importlib.util.find_spec("broadcaster") is None:
        raise RuntimeError("the broadcaster package is needed: .venv/bin/pip install -e '.[bench]'")
    port = free_port()
    command = [sys.executable, str(BENCH_DIR / "broadcaster_server.py"), "--port", str(port),
               "--redis-url", redis_url]
    workdir = Path(tempfile.mkdtemp(prefix="crossnode-broadcaster-"))
    return _launch("broadcaster", pinned(command, core), port, dict(os.environ), workdir)


def _launch(name: str, command: list[str], port: int, env: dict[str, str],
            workdir: Path) -> ServerProcess:
    """As bench/servers.py launches: own session, output into `workdir`/server.log."""
    with open(workdir / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return ServerProcess(name, port, process, workdir)


def start_deployment(name: str, args: argparse.Namespace) -> Deployment:
    """Start `name`'s servers; on failure, whatever had started is stopped."""
    from servers import start_baseline

    cores = args.node_cores
    deployment = Deployment(name, "baseline" if name in ("baseline", PEER) else "hub", [])
    try:
        if name in ("hub+redis", CROSS, PEER):
            deployment.redis_server, deployment.redis_client = start_redis(args.redis_core)
        server = deployment.redis_server
        redis_url = f"redis://127.0.0.1:{server.port}/0" if server else ""
        if name == "baseline":
            deployment.nodes.append(start_baseline(cores[0]))
        elif name == PEER:
            deployment.nodes += [start_broadcaster(cores[i % len(cores)], redis_url)
                                 for i in range(2)]
        else:
            shared = Path(tempfile.mkdtemp(prefix="crossnode-db-"))
            deployment.scratch.append(shared)
            deployment.nodes += start_hub_nodes(2 if name == CROSS else 1, cores, redis_url,
                                                shared)
        for node in deployment.nodes:
            wait_healthy(node)
        return deployment
    except BaseException:
        deployment.stop()
        raise


def start_hub_nodes(count: int, cores: list[int], redis_url: str,
                    shared: Path) -> list[ServerProcess]:
    """`count` hub nodes with the same secrets and one SQLite file in `shared`, on `redis_url`
    if given."""
    secret, api_key = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    settings = {"HUB_JWT_SECRET": secret, "HUB_API_KEY": api_key,
                "HUB_DATABASE_URL": f"sqlite:///{shared / 'hub.db'}"}
    if redis_url:
        settings.update(HUB_REDIS_URL=redis_url, HUB_REDIS_PREFIX="crossnode")
    nodes = []
    for index in range(count):
        node = start_hub(cores[index % len(cores)], settings=settings)
        node.jwt_secret, node.api_key = secret, api_key
        nodes.append(node)
        if index == 0:  # the first migrates the shared file alone
            wait_healthy(node)
    return nodes


@contextlib.contextmanager
def running(name: str, args: argparse.Namespace) -> Iterator[Deployment]:
    deployment = start_deployment(name, args)
    try:
        yield deployment
    finally:
        deployment.stop()


def subscriber_specs(deployment: Deployment, total: int, workers: int) -> list[dict[str, Any]]:
    """Subscriber process `i` connects its share to node `i mod nodes`; hub subscribers get one
    user each."""
    specs, first = [], 0
    for index in range(workers):
        node = deployment.nodes[index % len(deployment.nodes)]
        count = total // workers + (1 if index < total % workers else 0)
        if deployment.subscriber_kind == "hub":
            tokens = [node.mint_token(f"bench-{u}") for u in range(first, first + count)]
        else:
            tokens = [""] * count
        specs.append({"kind": deployment.subscriber_kind, "host": "127.0.0.1",
                      "port": node.port, "channel": CHANNEL, "count": count,
                      "tokens": tokens, "concurrency": 25})
        first += count
    return specs


async def open_subscribers(deployment: Deployment, pool: WorkerPool,
                           args: argparse.Namespace) -> dict[str, Any]:
    from procstat import rss_kib

    await asyncio.sleep(1.0)
    before = sum(rss_kib(n.pid) for n in deployment.nodes)
    replies = await pool.open(subscriber_specs(deployment, args.subscribers, pool_size(args,
                                                                                       deployment)))
    opened = sum(r["opened"] for r in replies)
    if opened != args.subscribers:
        errors = [e for r in replies for e in r["errors"]]
        raise RuntimeError(f"only {opened}/{args.subscribers} subscribers set up: {errors}")
    await asyncio.sleep(args.settle_seconds)
    after = sum(rss_kib(n.pid) for n in deployment.nodes)
    return {"subscribers": opened, "kib_per_connection": round((after - before) / opened, 2)}


def pool_size(args: argparse.Namespace, deployment: Deployment) -> int:
    """At least one subscriber process per node, so each node's share has its own reader."""
    count = max(int(args.workers), len(deployment.nodes))
    return count + (-count) % len(deployment.nodes)


async def run_phase(phase: int, publisher: Publisher, pool: WorkerPool,
                    deployment: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    """bench/fanout.py's phase with the nodes and Redis as CPU groups of their own, and Redis's
    counters taken before publishing and after the deliveries drained."""
    window = PhaseCpu({**deployment.cpu_groups(), "subscribers": pool.pids,
                       "publisher": [os.getpid()]})
    before = deployment.redis_counters()
    started = time.monotonic()
    window.start()
    if phase == FIXED:
        count = round(args.rate * args.fixed_seconds)
        log = await publish_phase(publisher, phase, args.payload_bytes, args.max_inflight,
                                  count=count, rate=args.rate)
    else:
        log = await publish_phase(publisher, phase, args.payload_bytes, args.max_inflight,
                                  seconds=args.max_seconds)
    publish_cpu = window.stop()
    published = time.monotonic()
    warn_if_shared(publish_cpu)
    window.start()
    await drain(pool, phase, log.accepted * args.subscribers, args.drain_seconds)
    drain_cpu = window.stop()
    seconds = (published - started, time.monotonic() - published)
    result = summarize(log, await pool.request(("collect", phase)), publish_cpu, drain_cpu)
    result["redis"] = per_publication(before, deployment.redis_counters(), log.accepted)
    result["server_cpu_us_per_delivery"] = cpu_per_delivery(
        [f"cpu_node{i}" for i in range(1, len(deployment.nodes) + 1)],
        (publish_cpu, drain_cpu), seconds, result["received"])
    return result


def cpu_per_delivery(groups: list[str], windows: tuple[dict[str, float], ...],
                     seconds: tuple[float, ...], received: int) -> float | None:
    """CPU time of the nodes (not Redis) over the phase, publishing and draining, per delivery
    received: the cost of a delivery, which sharing the cores with other programs changes far
    less than the rates."""
    if not received:
        return None
    spent = sum(cpu.get(group, 0.0) / 100 * wall
                for cpu, wall in zip(windows, seconds, strict=True) for group in groups)
    return round(spent * 1e6 / received, 2)


def per_publication(before: dict[str, float], after: dict[str, float],
                    publications: int) -> dict[str, Any]:
    """Redis commands per publication, by command, and Redis CPU µs per publication."""
    if not after or not publications:
        return {}
    calls = {name: after[name] - before.get(name, 0.0) for name in after if name != "cpu_s"}
    return {
        "commands_per_publication": {name: round(n / publications, 3)
                                     for name, n in sorted(calls.items()) if n},
        "cpu_us_per_publication": round(
            (after["cpu_s"] - before.get("cpu_s", 0.0)) * 1e6 / publications, 1),
    }


async def bench_deployment(name: str, args: argparse.Namespace) -> dict[str, Any]:
    background = await wait_quiet(args.quiet_wait_seconds)
    print(f"[{name}] starting", flush=True)
    with running(name, args) as deployment:
        pool = WorkerPool(pool_size(args, deployment))
        try:
            async with connected_publisher(deployment.nodes[0], args.max_inflight,
                                           hub=deployment.subscriber_kind == "hub") as publisher:
                memory = await open_subscribers(deployment, pool, args)
                print(f"[{name}] {memory['subscribers']} subscribers on "
                      f"{len(deployment.nodes)} node(s)", flush=True)
                result: dict[str, Any] = {"background_busy_percent": background,
                                          "memory": memory, "nodes": len(deployment.nodes)}
                for phase, phase_name in enumerate(PHASES):
                    print(f"[{name}] {phase_name} phase", flush=True)
                    result[phase_name] = await run_phase(phase, publisher, pool, deployment,
                                                         args)
                return result
        finally:
            pool.stop()


ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("background cores % (before)", ("background_busy_percent",)),
    ("idle KiB/connection", ("memory", "kib_per_connection")),
    *[row for phase in PHASES for row in [
        (f"{phase} publishes/s", (phase, "publishes_per_s")),
        (f"{phase} deliveries/s", (phase, "deliveries_per_s")),
        (f"{phase} latency p50 ms", (phase, "latency_ms", "p50")),
        (f"{phase} latency p99 ms", (phase, "latency_ms", "p99")),
        (f"{phase} latency max ms", (phase, "latency_ms", "max")),
        (f"{phase} lost", (phase, "lost")),
        (f"{phase} duplicates", (phase, "duplicates")),
        (f"{phase} disconnected", (phase, "disconnected")),
        (f"{phase} Redis PUBLISH/publication", (phase, "redis", "commands_per_publication",
                                                "publish")),
        (f"{phase} Redis EVALSHA/publication", (phase, "redis", "commands_per_publication",
                                                "evalsha")),
        (f"{phase} Redis commands/publication", (phase, "redis", "commands_per_publication")),
        (f"{phase} Redis CPU µs/publication", (phase, "redis", "cpu_us_per_publication")),
        (f"{phase} nodes' CPU µs/delivery", (phase, "server_cpu_us_per_delivery")),
        (f"{phase} core0 % (servers)", (phase, "cpu_percent", "core0")),
        (f"{phase} core1 % (load)", (phase, "cpu_percent", "core1")),
        (f"{phase} node1 cpu %", (phase, "cpu_percent", "cpu_node1")),
        (f"{phase} node2 cpu %", (phase, "cpu_percent", "cpu_node2")),
        (f"{phase} redis cpu %", (phase, "cpu_percent", "cpu_redis")),
        (f"{phase} subscribers cpu %", (phase, "cpu_percent", "cpu_subscribers")),
        (f"{phase} publisher cpu %", (phase, "cpu_percent", "cpu_publisher")),
        (f"{phase} other programs cpu %", (phase, "cpu_percent", "cpu_other_programs")),
        (f"{phase} bottleneck", (phase, "bottleneck")),
    ]],
]


def lookup(result: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(result, dict):
            return None
        result = result.get(key)
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(results: dict[str, dict[str, Any]]) -> str:
    names = [n for n in DEPLOYMENTS if n in results]
    lines = [["metric", *names]]
    lines += [[label, *(_cell(lookup(results[n], path)) for n in names)] for label, path in ROWS]
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in lines)


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with the figures it was judged on (None: not run)."""
    out: dict[str, Any] = {}
    single = lookup(results.get(SINGLE), ("fixed", "latency_ms", "p99"))
    cross = lookup(results.get(CROSS), ("fixed", "latency_ms", "p99"))
    if single and cross:
        out["fixed_p99_cross_over_single"] = round(cross / single, 2)
        out["p99_target_met"] = cross / single <= TARGET_P99_RATIO
    losses = {n: sum(lookup(r, (p, "lost")) or 0 for p in PHASES) for n, r in results.items()}
    out["lost"] = losses
    out["no_loss"] = not any(losses.values())
    hub_publish = [lookup(r, (p, "redis", "commands_per_publication", "publish"))
                   for n, r in results.items() if n.startswith("hub") for p in PHASES]
    hub_publish = [v for v in hub_publish if v is not None]
    if hub_publish:
        out["hub_redis_publish_per_publication"] = sorted(set(hub_publish))
        out["one_publish_per_publication"] = all(v == 1 for v in hub_publish)
    hub2 = lookup(results.get(CROSS), ("max", "deliveries_per_s"))
    peer = lookup(results.get(PEER), ("max", "deliveries_per_s"))
    if hub2 and peer:
        out["max_deliveries_hub_x2_over_broadcaster_x2"] = round(hub2 / peer, 2)
        out["peer_target_met"] = hub2 / peer >= TARGET_PEER_RATIO
    one = lookup(results.get(SINGLE), ("max", "deliveries_per_s"))
    if one and hub2:
        out["max_deliveries_two_nodes_over_one"] = round(hub2 / one, 2)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(DEPLOYMENTS),
                        help=f"comma-separated, of: {', '.join(DEPLOYMENTS)}")
    add_load_options(parser)
    parser.add_argument("--node-cores", default="0", help="cores the nodes are pinned to, "
                        "round-robin (default: all on core 0)")
    parser.add_argument("--redis-core", type=int, default=0)
    parser.add_argument("--settle-seconds", type=float, default=2.0)
    parser.add_argument("--drain-seconds", type=float, default=60.0, help="max wait per phase")
    parser.add_argument("--quiet-wait-seconds", type=float, default=60.0,
                        help="wait for idle cores before each deployment")
    parser.add_argument("--quick", action="store_true", help="smoke test: small and short")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(DEPLOYMENTS)
    if unknown:
        parser.error(f"unknown deployments: {', '.join(sorted(unknown))}")
    args.node_cores = [int(c) for c in args.node_cores.split(",")]
    args.subscribers = args.subscribers or (200 if args.quick else 1000)
    args.fixed_seconds = args.fixed_seconds or (3.0 if args.quick else 10.0)
    args.max_seconds = args.max_seconds or (3.0 if args.quick else 5.0)
    return args


async def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {name: await bench_deployment(name, args) for name in DEPLOYMENTS
            if name in args.only}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_bench(run_all(args), "servers and workers stopped")
    if results is None:
        return 130
    judged = verdict(results)
    print()
    print(render_table(results))
    print()
    print("verdict:", json.dumps(judged))
    if args.json:
        document = {"config": {k: v for k, v in vars(args).items() if k != "json"},
                    "environment": environment(), "repository": str(REPO_ROOT),
                    "results": results, "verdict": judged}
        write_report(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
