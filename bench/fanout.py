"""Fan-out benchmark: the hub against two bare servers, `websockets` and node's `ws`, same load.

The baselines (`--only baseline`, `--only ws`) send each publication to every connection and
nothing more: `websockets.broadcast()` on uvloop (`baseline_server.py`), and node's `ws` with
one `send` of the same Buffer per subscriber (`ws_baseline/server.js`, installed with `npm ci`
from its lockfile on first use).

One channel, N subscribers, ~200-byte publications. For each server, in one invocation:

1. idle memory: server RSS (VmRSS, whole process tree) before and after N connections have
   connected and subscribed, before any publication, divided by N;
2. a fixed phase: `--rate` publications/s for `--fixed-seconds` (N x rate deliveries/s);
3. a max phase: publish as fast as the server takes it for `--max-seconds`, with at most
   `--max-inflight` publishes outstanding, then wait (bounded) for deliveries to drain.

Deliveries/s = deliveries received / (first publish -> last delivery). Latency = receive time
minus the publisher's `time.time_ns()` stamp in the payload. Losses are exact: each subscriber
keeps a bitmap of received sequence numbers. The server is pinned to core 0 and everything on
the load side (this process, the publisher, the subscriber workers) to core 1; per-core busy
time shows which side ran out of CPU first.

Run: `.venv/bin/python bench/fanout.py --only both --json out.json` (or `--quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from array import array
from collections.abc import AsyncIterator, Coroutine, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

import uvloop
import websockets
from loadgen import PHASES, worker_main
from procstat import CpuWindow, OtherProgramsWindow, process_tree, rss_kib
from publisher import BaselinePublisher, HubPublisher, Publisher, PublishLog, publish_phase
from servers import (
    WS_BASELINE_DIR,
    ServerProcess,
    start_baseline,
    start_hub,
    start_ws_baseline,
    wait_healthy,
)

CHANNEL = "session:bench"
TARGETS = ("baseline", "ws", "hub")
"""`baseline`: Python `websockets` (baseline_server.py); `ws`: node's `ws` (ws_baseline/)."""
SERVER_CORE, LOAD_CORE = 0, 1
FIXED = PHASES.index("fixed")
SATURATED_PERCENT = 90.0
IDLE_PERCENT = 5.0
BACKLOG_SECONDS = 0.5
QUIET_PERCENT = 10.0


class WorkerPool:
    """Subscriber worker processes, spoken to over pipes without blocking the event loop."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(child,), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    async def request(self, message: tuple[Any, ...], timeout: float = 60.0) -> list[Any]:
        for pipe in self.pipes:
            pipe.send(message)
        return [await _receive(pipe, timeout) for pipe in self.pipes]

    async def open(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for pipe, spec in zip(self.pipes, specs, strict=True):
            pipe.send(("open", spec))
        return [await _receive(pipe, 180.0) for pipe in self.pipes]

    def stop(self) -> None:
        """Ask politely, then terminate whatever is left after 5 s."""
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("close",))
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


async def _receive(pipe: Connection, timeout: float) -> Any:
    """`pipe.recv()` once the pipe is readable, so the loop keeps serving meanwhile.

    uvloop makes a watched descriptor non-blocking; a multi-megabyte reply then fails halfway
    with EAGAIN, so the pipe is switched back to blocking before it is read.
    """
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    loop.add_reader(pipe.fileno(), lambda: readable.done() or readable.set_result(None))
    try:
        await asyncio.wait_for(readable, timeout)
    finally:
        loop.remove_reader(pipe.fileno())
        os.set_blocking(pipe.fileno(), True)
    return pipe.recv()


@contextlib.contextmanager
def running_server(target: str) -> Iterator[ServerProcess]:
    starts = {"hub": start_hub, "ws": start_ws_baseline, "baseline": start_baseline}
    server = starts[target](SERVER_CORE)
    try:
        wait_healthy(server)
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected_publisher(
    server: ServerProcess, window: int, *, hub: bool | None = None
) -> AsyncIterator[Publisher]:
    """The hub's HTTP publisher for a hub (`hub`, default: the server is named "hub"), the
    baseline's TCP publisher otherwise, warmed up."""
    publisher: Publisher
    if server.name == "hub" if hub is None else hub:
        publisher = HubPublisher(server.base_url, server.api_key, CHANNEL, window)
    else:
        publisher = BaselinePublisher("127.0.0.1", server.port)
    try:
        await publisher.warm_up()
        yield publisher
    finally:
        await publisher.aclose()


def subscriber_specs(server: ServerProcess, total: int, workers: int) -> list[dict[str, Any]]:
    """Split `total` subscribers as evenly as possible; hub subscribers get one user each."""
    specs, first = [], 0
    for index in range(workers):
        count = total // workers + (1 if index < total % workers else 0)
        users = range(first, first + count)
        tokens = [server.mint_token(f"bench-{u}") for u in users] if server.name == "hub" else []
        specs.append(
            {
                "kind": server.name,
                "host": "127.0.0.1",
                "port": server.port,
                "channel": CHANNEL,
                "count": count,
                "tokens": tokens or [""] * count,
                "concurrency": 25,
            }
        )
        first += count
    return specs


async def open_subscribers(
    server: ServerProcess, pool: WorkerPool, args: argparse.Namespace
) -> dict[str, Any]:
    """Connect + subscribe everyone and charge the RSS growth to those idle connections."""
    await asyncio.sleep(1.0)
    before = rss_kib(server.pid)
    replies = await pool.open(subscriber_specs(server, args.subscribers, args.workers))
    opened = sum(r["opened"] for r in replies)
    if opened != args.subscribers:
        errors = [e for r in replies for e in r["errors"]]
        raise RuntimeError(f"only {opened}/{args.subscribers} subscribers set up: {errors}")
    await asyncio.sleep(args.settle_seconds)
    after = rss_kib(server.pid)
    return {
        "subscribers": opened,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round((after - before) / opened, 2),
        "load_affinity": replies[0]["affinity"],
    }


async def drain(pool: WorkerPool, phase: int, expected: int, max_wait: float) -> None:
    """Wait until every delivery arrived, nothing arrived for 3 s, or `max_wait` passed."""
    deadline, last_total, last_change = time.monotonic() + max_wait, -1, time.monotonic()
    while time.monotonic() < deadline:
        total = sum(await pool.request(("progress", phase)))
        if total >= expected:
            return
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > 3.0:
            return
        await asyncio.sleep(0.2)


class PhaseCpu:
    """The benchmark's process groups and the cores (`CpuWindow`), plus every other program
    on the machine as `cpu_other_programs`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = CpuWindow(groups)
        ours = {pid for pids in groups.values() for pid in pids}
        self._others = OtherProgramsWindow({os.getpid(), *ours})

    def start(self) -> None:
        self._groups.start()
        self._others.start()

    def stop(self) -> dict[str, float]:
        cpu = self._groups.stop()
        cpu["cpu_other_programs"] = self._others.stop()
        return cpu


async def run_phase(
    phase: int,
    publisher: Publisher,
    pool: WorkerPool,
    server: ServerProcess,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Publish, then drain; CPU is sampled separately for the two parts.

    Who is still busy while the backlog drains (publishing over) tells whether the server or
    the load generator was holding deliveries back.
    """
    window = PhaseCpu(
        {
            "server": process_tree(server.pid),
            "subscribers": pool.pids,
            "publisher": [os.getpid()],
        }
    )
    window.start()
    if phase == FIXED:
        count = round(args.rate * args.fixed_seconds)
        log = await publish_phase(
            publisher, phase, args.payload_bytes, args.max_inflight, count=count, rate=args.rate
        )
    else:
        log = await publish_phase(
            publisher, phase, args.payload_bytes, args.max_inflight, seconds=args.max_seconds
        )
    publish_cpu = window.stop()
    warn_if_shared(publish_cpu)
    window.start()
    await drain(pool, phase, log.accepted * args.subscribers, args.drain_seconds)
    drain_cpu = window.stop()
    return summarize(log, await pool.request(("collect", phase)), publish_cpu, drain_cpu)


def summarize(
    log: PublishLog,
    stats: list[dict[str, Any]],
    publish_cpu: dict[str, float],
    drain_cpu: dict[str, float],
) -> dict[str, Any]:
    unique = [n for s in stats for n in s["unique"]]
    received = sum(unique)
    expected = log.accepted * len(unique)
    last_ns = max((s["last_ns"] for s in stats), default=0)
    span = (last_ns - log.first_ns) / 1e9 if received else 0.0
    backlog = max(0.0, (last_ns - log.last_ns) / 1e9) if received else 0.0
    return {
        "published": log.accepted,
        "publish_rejected": log.rejected,
        "publishes_per_s": round(log.accepted / log.seconds, 1) if log.seconds else 0.0,
        "expected": expected,
        "received": received,
        "lost": expected - received,
        "subscribers_with_loss": sum(1 for n in unique if n < log.accepted),
        "duplicates": sum(s["duplicates"] for s in stats),
        "disconnected": sum(s["disconnected"] for s in stats),
        "close_codes": _merge_counts([s["close_codes"] for s in stats]),
        "deliveries_per_s": round(received / span) if span > 0 else 0,
        "first_publish_to_last_delivery_s": round(span, 3),
        "backlog_s": round(backlog, 3),
        "latency_ms": latency_summary([s["latencies_us"] for s in stats]),
        "cpu_percent": publish_cpu,
        "drain_cpu_percent": drain_cpu,
        "bottleneck": bottleneck(publish_cpu, drain_cpu, backlog),
    }


def warn_if_shared(cpu: dict[str, float]) -> None:
    """Other programs' CPU lands on the same two cores and skews that phase's numbers."""
    if cpu["cpu_other_programs"] > QUIET_PERCENT:
        print(f"warning: other programs used {cpu['cpu_other_programs']} % CPU", flush=True)


def _merge_counts(counts: list[dict[Any, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for key, n in count.items():
            merged[str(key)] = merged.get(str(key), 0) + n
    return merged


def latency_summary(chunks: list[bytes]) -> dict[str, float]:
    """p50/p99/max in ms over every sample (nearest rank); empty when nothing arrived."""
    samples = array("q")
    for chunk in chunks:
        samples.frombytes(chunk)
    if not samples:
        return {}
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] / 1000

    return {"p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1] / 1000}


def bottleneck(publish_cpu: dict[str, float], drain_cpu: dict[str, float], backlog: float) -> str:
    """Name the side that limited deliveries.

    The load core often reads ~100 % busy even when it keeps up: an event loop with spare
    capacity just reads smaller batches more often. What decides is where deliveries waited:
    a server core with no idle time while publishing is saturated; deliveries still arriving
    well after the last publish, with the load core busier than the server core meanwhile,
    were queued for the load generator. A server core with idle time next to a saturated load
    core means the publisher or the subscribers could not feed or drain it faster.
    """
    server, load = f"core{SERVER_CORE}", f"core{LOAD_CORE}"
    server_idle = 100.0 - publish_cpu.get(server, 0.0)
    server_saturated = server_idle <= IDLE_PERCENT
    draining = backlog > BACKLOG_SECONDS
    if draining and drain_cpu.get(server, 0.0) >= drain_cpu.get(load, 0.0):
        return "server (still fanning out after publishing)"
    if draining and server_saturated:
        return f"both (server core saturated, deliveries queued {backlog:.1f} s for the load side)"
    if server_saturated:
        return "server"
    if draining:
        return f"load generator (deliveries queued {backlog:.1f} s for it)"
    if publish_cpu.get(load, 0.0) >= SATURATED_PERCENT:
        return f"load generator (server core {server_idle:.0f} % idle)"
    return "neither core saturated"


async def wait_quiet(max_wait: float) -> dict[str, float]:
    """Wait up to `max_wait` s for both cores to be idle; return the last 1 s sample.

    Other work on the machine would be charged to whichever server happens to be running.
    """
    deadline = time.monotonic() + max_wait
    while True:
        window = CpuWindow({})
        window.start()
        await asyncio.sleep(1.0)
        busy = window.stop()
        if max(busy.values(), default=0.0) <= QUIET_PERCENT:
            return busy
        if time.monotonic() >= deadline:
            print(f"warning: cores busy before the run: {busy}", flush=True)
            return busy


async def bench_target(target: str, args: argparse.Namespace) -> dict[str, Any]:
    background = await wait_quiet(args.quiet_wait_seconds)
    print(f"[{target}] starting server", flush=True)
    with running_server(target) as server:
        pool = WorkerPool(args.workers)
        try:
            async with connected_publisher(server, args.max_inflight) as publisher:
                memory = await open_subscribers(server, pool, args)
                print(
                    f"[{target}] {memory['subscribers']} subscribers, "
                    f"{memory['kib_per_connection']} KiB/connection",
                    flush=True,
                )
                result: dict[str, Any] = {"background_busy_percent": background, "memory": memory}
                for phase, name in enumerate(PHASES):
                    print(f"[{target}] {name} phase", flush=True)
                    result[name] = await run_phase(phase, publisher, pool, server, args)
                result["final_rss_kib"] = rss_kib(server.pid)
                return result
        finally:
            pool.stop()


ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("background server core % (before)", ("background_busy_percent", f"core{SERVER_CORE}")),
    ("background load core % (before)", ("background_busy_percent", f"core{LOAD_CORE}")),
    ("idle KiB/connection", ("memory", "kib_per_connection")),
    ("fixed deliveries/s", ("fixed", "deliveries_per_s")),
    ("fixed latency p50 ms", ("fixed", "latency_ms", "p50")),
    ("fixed latency p99 ms", ("fixed", "latency_ms", "p99")),
    ("fixed latency max ms", ("fixed", "latency_ms", "max")),
    ("fixed lost", ("fixed", "lost")),
    ("fixed server core %", ("fixed", "cpu_percent", f"core{SERVER_CORE}")),
    ("fixed load core %", ("fixed", "cpu_percent", f"core{LOAD_CORE}")),
    ("fixed other programs cpu %", ("fixed", "cpu_percent", "cpu_other_programs")),
    ("max publishes/s", ("max", "publishes_per_s")),
    ("max deliveries/s", ("max", "deliveries_per_s")),
    ("max latency p50 ms", ("max", "latency_ms", "p50")),
    ("max latency p99 ms", ("max", "latency_ms", "p99")),
    ("max latency max ms", ("max", "latency_ms", "max")),
    ("max lost", ("max", "lost")),
    ("max disconnected", ("max", "disconnected")),
    ("max backlog after publishing s", ("max", "backlog_s")),
    ("max server core %", ("max", "cpu_percent", f"core{SERVER_CORE}")),
    ("max load core %", ("max", "cpu_percent", f"core{LOAD_CORE}")),
    ("max subscribers cpu %", ("max", "cpu_percent", "cpu_subscribers")),
    ("max server process cpu %", ("max", "cpu_percent", "cpu_server")),
    ("max publisher cpu %", ("max", "cpu_percent", "cpu_publisher")),
    ("max other programs cpu %", ("max", "cpu_percent", "cpu_other_programs")),
    ("max bottleneck", ("max", "bottleneck")),
]


CAPACITY_ROWS = ("max publishes/s", "max deliveries/s")


def lookup(result: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def ratios(results: dict[str, dict[str, Any]], baseline: str = "baseline") -> dict[str, float]:
    """hub / `baseline` for every numeric row both servers produced."""
    out = {}
    for label, path in ROWS:
        hub, base = lookup(results.get("hub"), path), lookup(results.get(baseline), path)
        if isinstance(hub, int | float) and isinstance(base, int | float) and base:
            out[label] = round(hub / base, 3)
    return out


def render_table(results: dict[str, dict[str, Any]]) -> str:
    """One column per server, then hub/<baseline> for each baseline that ran beside the hub."""
    targets = [t for t in TARGETS if t in results]
    compared = [t for t in targets if t != "hub"] if "hub" in results else []
    each = {base: ratios(results, base) for base in compared}
    header = ["metric", *targets, *(f"hub/{base}" for base in compared)]
    lines = [header]
    for label, path in ROWS:
        marks = {t: _bound_mark(results[t], label) for t in targets}
        row = [label, *(marks[t] + _cell(lookup(results[t], path)) for t in targets)]
        for base in compared:
            row.append(_ratio_mark(marks["hub"], marks[base]) + _cell(each[base].get(label)))
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in lines
    )


def _bound_mark(result: dict[str, Any], label: str) -> str:
    """ "≥ " on max-phase rates that the load generator, not the server, capped."""
    capped = str(lookup(result, ("max", "bottleneck"))).startswith("load generator")
    return "≥ " if capped and label in CAPACITY_ROWS else ""


def _ratio_mark(hub: str, baseline: str) -> str:
    if hub and baseline:
        return "? "
    return "≥ " if hub else ("≤ " if baseline else "")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def environment() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    model = models[0] if models else platform.processor()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "uvloop": uvloop.__version__,
        "event_loop": "uvloop (orchestrator, workers, baseline)",
        "node": _command_output(["node", "--version"]),
        "ws": _ws_version(),
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
    }


def _command_output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def _ws_version() -> str:
    manifest = WS_BASELINE_DIR / "node_modules" / "ws" / "package.json"
    return str(json.loads(manifest.read_text())["version"]) if manifest.exists() else ""


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The fan-out load's shape, shared with bench/crossnode.py (which runs the same load)."""
    parser.add_argument("--subscribers", type=int, help="default 1000 (200 with --quick)")
    parser.add_argument("--rate", type=float, default=10.0, help="publications/s, fixed phase")
    parser.add_argument("--fixed-seconds", type=float, help="default 10 (3 with --quick)")
    parser.add_argument("--max-seconds", type=float, help="default 5 (3 with --quick)")
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument("--max-inflight", type=int, default=16, help="publishes outstanding")
    parser.add_argument("--workers", type=int, default=2, help="subscriber processes (core 1)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=(*TARGETS, "both", "all"),
        default="all",
        help="all: websockets baseline, ws baseline and hub; both: websockets baseline and hub",
    )
    add_load_options(parser)
    parser.add_argument("--settle-seconds", type=float, default=2.0, help="before idle RSS")
    parser.add_argument("--drain-seconds", type=float, default=60.0, help="max wait per phase")
    parser.add_argument(
        "--quiet-wait-seconds", type=float, default=60.0, help="wait for idle cores first"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small and short")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.subscribers = args.subscribers or (200 if quick else 1000)
    args.fixed_seconds = args.fixed_seconds or (3.0 if quick else 10.0)
    args.max_seconds = args.max_seconds or (3.0 if quick else 5.0)
    return args


T = TypeVar("T")


def prepare_process() -> None:
    """Pin the load side to its core, allow enough sockets, turn SIGTERM into cleanup."""
    if len(os.sched_getaffinity(0)) < 2 or LOAD_CORE not in os.sched_getaffinity(0):
        raise SystemExit("needs cores 0 and 1: the server and the load each get one")
    os.sched_setaffinity(0, {LOAD_CORE})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)


def run_bench(work: Coroutine[Any, Any, T], stopped: str) -> T | None:
    """`prepare_process`, then `work` on uvloop. None after Ctrl-C or SIGTERM, once the
    servers it started are stopped; `stopped` tells the user what was cleaned up."""
    prepare_process()
    try:
        return uvloop.run(work)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {stopped}", file=sys.stderr)
        return None


def write_report(path: str, document: dict[str, Any]) -> None:
    """The run's JSON document, as every bench writes it for `--json`."""
    Path(path).write_text(json.dumps(document, indent=2))
    print(f"\nwrote {path}")


async def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    targets = {"all": TARGETS, "both": ("baseline", "hub")}.get(args.only, (args.only,))
    return {target: await bench_target(target, args) for target in targets}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_bench(run_all(args), "servers and workers stopped")
    if results is None:
        return 130
    print()
    print(render_table(results))
    if args.json:
        document = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "environment": environment(),
            "results": results,
            "ratios_hub_over_baseline": ratios(results, "baseline"),
            "ratios_hub_over_ws": ratios(results, "ws"),
        }
        write_report(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
