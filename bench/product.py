"""Product benchmark: one node under a gym's worth of open-loop load, and connection storms.

Load (the default): `--athletes` athletes, each with one live session and one device that
publishes set events on its own fixed schedule with jitter (`--rate` events/s offered in
total), and `--trainers` trainers, each watching `--clients-per-trainer` athletes' session
channels. The hub runs on PostgreSQL, pinned to core 0; this process (devices and trainers)
runs on core 1. Open loop: a device sends at its slot whether or not its earlier events were
acknowledged, so a hub that falls behind shows as latency and loss, not as less load.
Reported for the measured window (after a warm-up): offered and achieved rates, ack and
device → trainer latency p50/p99/max, the load generator's schedule lag (how late sends left
against their slots: a saturated load core shows here), events not acknowledged, acknowledged
but never delivered, duplicates, CPU of the hub, this process and PostgreSQL, hub RSS, and
whether every acknowledged event is stored exactly once.

Two nodes (`--nodes 2`): the same load on two hub processes sharing the hub's core, on a
private Redis: devices connect to node 1, trainers to node 2, so every delivery a trainer
gets crossed Redis. The hub's CPU and RSS are both nodes'; its histograms are node 1's (where
every publish and commit happens).

Storm (`--storm N`): the same load at a smaller size runs as the live sessions; then N clients
connect at once, as when a node dies and its clients come to this one. `--storm-users known`
(their users exist in the database before the hub starts) or `new` (first connect ever).
Reported: connects/s, time until all are connected, connect p50/p99, errors by kind (close
codes, error replies, client timeouts, refused sockets; retried as the SDKs do, with jittered
backoff), hub RSS per connection, and the live sessions' ack latency before, during and after.
`--storm-server websockets` runs the same storm against `storm_baseline_server.py` instead, a
`websockets` server that only answers connects (no token, user, subscription or database, no
live load): the pace of the bare WebSocket and JSON work on this machine.

Run: `.venv/bin/python bench/product.py --rate 5000 --json product.json`,
`.venv/bin/python bench/product.py --rate 5000 --nodes 2`,
`.venv/bin/python bench/product.py --storm 19000 --storm-users known`, or `--quick`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

import asyncpg
import httpx
from fanout import SERVER_CORE, run_bench, wait_quiet, write_report
from ingest import DEFAULT_ADMIN_URL, MeasuredCpu, environment, fresh_database, postgres_pids
from ingest import verify as verify_stored
from procstat import process_tree, rss_kib
from product_clients import Ledger, OpenLoopFleet, Watcher, storm_worker
from servers import ServerProcess, start_hub, start_redis, start_storm_baseline, wait_healthy

from hub import auth
from models.db import Database

CONNECT_CONCURRENCY = 50
"""Set-up connects in flight (devices, trainers): the set-up is not what is measured."""


# -- set-up -------------------------------------------------------------------------------


@contextlib.contextmanager
def running_hub(database_url: str, settings: dict[str, str]) -> Iterator[ServerProcess]:
    with running_nodes(1, database_url, settings) as (server,):
        yield server


@contextlib.contextmanager
def running_nodes(
    count: int, database_url: str, settings: dict[str, str]
) -> Iterator[list[ServerProcess]]:
    """`count` hub nodes on the hub's core with one secret and one database; two or more share
    a private Redis (on the same core). The first migrates the database before the others
    start."""
    nodes: list[ServerProcess] = []
    redis_server: ServerProcess | None = None
    try:
        shared = dict(settings)
        if count > 1:
            redis_server, _ = start_redis(SERVER_CORE)
            shared.update(HUB_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
                          HUB_REDIS_PREFIX="product",
                          HUB_JWT_SECRET=secrets.token_urlsafe(32),
                          HUB_API_KEY=secrets.token_urlsafe(24))
        for _ in range(count):
            node = start_hub(SERVER_CORE, database_url, shared)
            if count > 1:
                node.jwt_secret, node.api_key = shared["HUB_JWT_SECRET"], shared["HUB_API_KEY"]
            nodes.append(node)
            wait_healthy(node)
        yield nodes
    except BaseException:
        for node in nodes:
            print(f"{node.name} log, last lines:\n{node.log_tail()}", file=sys.stderr)
        raise
    finally:
        for node in nodes:
            node.stop()
        if redis_server is not None:
            redis_server.stop()


async def migrate(url: str, users: list[str]) -> None:
    """The hub's schema, as the hub itself migrates it, and `users` as existing athletes."""
    db = Database(url)
    await db.start()
    await db.close()
    if users:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            now = datetime.now(UTC)
            await conn.copy_records_to_table(
                "users",
                records=[(u, "", "athlete", now) for u in users],
                columns=["id", "name", "role", "created_at"],
            )
        finally:
            await conn.close()


async def link_trainers(url: str, links: list[tuple[str, str]]) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        now = datetime.now(UTC)
        await conn.executemany(
            "INSERT INTO trainer_links (trainer_id, client_id, created_at) VALUES ($1, $2, $3)",
            [(t, c, now) for t, c in links],
        )
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def live_load(
    server: ServerProcess, url: str, args: argparse.Namespace, ledger: Ledger,
    trainers_on: ServerProcess | None = None,
) -> AsyncIterator[OpenLoopFleet]:
    """Devices connected to `server` with their sessions started, trainers linked and
    subscribed, on `trainers_on` (by default the same node)."""
    ws_url = f"ws://127.0.0.1:{server.port}/connection/websocket"
    where = ("127.0.0.1", (trainers_on or server).port, "/connection/websocket")

    def device_token(athlete: str, device: str) -> str:
        return str(auth.mint(server.jwt_secret, athlete, "device", device=device))

    watchers: list[Watcher] = []
    async with OpenLoopFleet(
        ws_url, device_token, athletes=args.athletes, devices_per_athlete=1, title="product"
    ) as fleet:
        try:
            per = args.clients_per_trainer
            trainers = [f"trainer-{fleet.run_id}-t{j}" for j in range(args.trainers)]
            links = [(t, fleet.athletes[(j * per + k) % args.athletes])
                     for j, t in enumerate(trainers) for k in range(per)]
            await link_trainers(url, links)
            watchers = [
                Watcher(t, auth.mint(server.jwt_secret, t, "trainer"), ledger) for t in trainers
            ]
            gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

            async def watch(j: int, watcher: Watcher) -> None:
                async with gate:
                    await watcher.connect(*where)
                    sessions = [fleet.session_of((j * per + k) % args.athletes)
                                for k in range(per)]
                    await watcher.subscribe([f"session:{s}" for s in sessions])

            await asyncio.gather(*(watch(j, w) for j, w in enumerate(watchers)))
            yield fleet
        finally:
            fleet.stop()
            for watcher in watchers:
                watcher.abort()


class RssPeak:
    """The hub's resident memory (all its nodes'), sampled every 0.5 s while `async with`
    lasts."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.peak_kib = 0
        self._task: asyncio.Task[None] | None = None

    def _now(self) -> int:
        return sum(rss_kib(pid) for pid in self.pids)

    async def _sample(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, self._now())
            await asyncio.sleep(0.5)

    async def __aenter__(self) -> Self:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak_kib = max(self.peak_kib, self._now())


@contextlib.contextmanager
def py_spy(pid: int, seconds: float, out: str | None) -> Iterator[None]:
    """Sample the hub with py-spy (non-blocking, raw collapsed stacks) while the block runs."""
    if not out:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)),
               "--rate", "250", "--nonblocking", "--format", "raw", "--output", out]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            _, err = process.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        if process.returncode:
            print(f"warning: py-spy failed: {err.decode(errors='replace')[-500:]}", flush=True)


async def wait_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.perf_counter()))


async def drain(ledger: Ledger, seconds: float) -> float:
    """Wait for every sent event to be acknowledged and delivered, at most `seconds`."""
    start = time.perf_counter()
    while not ledger.settled() and time.perf_counter() - start < seconds:
        await asyncio.sleep(0.05)
    return round(time.perf_counter() - start, 3)


def cpu_groups(*nodes: ServerProcess) -> dict[str, list[int]]:
    """The hub is every node's process tree; Redis, when there is one, counts as other."""
    hub = [pid for node in nodes for pid in process_tree(node.pid)]
    return {"hub": hub, "load": [os.getpid()], "postgres": postgres_pids()}


# -- the hub's own histograms -----------------------------------------------------------

HISTOGRAMS: dict[str, tuple[str, dict[str, str], float]] = {
    "db_commit_ms": ("fitsync_db_commit_seconds", {}, 1000.0),
    "publish_command_ms": ("fitsync_command_duration_seconds", {"method": "publish"}, 1000.0),
    "connect_command_ms": ("fitsync_command_duration_seconds", {"method": "connect"}, 1000.0),
    "events_per_batch": ("fitsync_event_batch_size", {}, 1.0),
    "event_loop_lag_ms": ("fitsync_event_loop_lag_seconds", {}, 1000.0),
    "gc_pause_gen2_ms": ("fitsync_gc_pause_seconds", {"generation": "2"}, 1000.0),
}
"""What the hub measures inside: the event writer's transactions (sent → result), the time
from a command's dispatch to its reply, and batch sizes. Beside the load generator's
figures they tell a database that stalls from an event loop that does."""
_SAMPLE = re.compile(r'^(\w+)_bucket\{(.*)\} (\S+)$')


def scrape_buckets(server: ServerProcess) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts (upper bound → count) of `HISTOGRAMS` from `/metrics`."""
    try:
        text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    found: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        metric, raw_labels, value = match.groups()
        labels = dict(re.findall(r'(\w+)="([^"]*)"', raw_labels))
        bound = labels.pop("le")
        for name, (wanted, selector, _) in HISTOGRAMS.items():
            if metric == wanted and all(labels.get(k) == v for k, v in selector.items()):
                found[name][float(bound)] = float(value)
    return found


def histogram_window(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float]]:
    """Per histogram, observations between the two scrapes and the bucket bounds their p50,
    p99 and max fall under (`inf`: above the largest bucket)."""
    out: dict[str, dict[str, float]] = {}
    for name, (_, _, scale) in HISTOGRAMS.items():
        bounds = sorted(after.get(name, {}))
        counts = [after[name][b] - before.get(name, {}).get(b, 0.0) for b in bounds]
        total = counts[-1] if counts else 0.0
        if not total:
            continue
        summary: dict[str, float] = {"count": total}
        for label, q in (("p50_under", 0.5), ("p99_under", 0.99), ("max_under", 1.0)):
            bound = next(b for b, c in zip(bounds, counts, strict=True) if c >= q * total)
            summary[label] = bound * scale if bound != float("inf") else bound
        out[name] = summary
    return out


# -- the load -----------------------------------------------------------------------------


async def bench_load(args: argparse.Namespace) -> dict[str, Any]:
    ledger = Ledger()
    async with fresh_database(args.postgres, "product") as url:
        with running_nodes(args.nodes, url, args.hub_settings) as nodes:
            server = nodes[0]
            async with live_load(server, url, args, ledger, trainers_on=nodes[-1]) as fleet:
                rate = args.rate / args.athletes
                start = time.perf_counter() + 0.2
                measured = start + args.warmup_seconds
                end = measured + args.seconds
                fleet.schedule(ledger, rate=rate, jitter=args.jitter, start=start, end=end)
                await wait_until(measured)
                buckets = await asyncio.to_thread(scrape_buckets, server)
                async with RssPeak(*(node.pid for node in nodes)) as rss:
                    window = MeasuredCpu(cpu_groups(*nodes))
                    with py_spy(server.pid, args.py_spy_seconds or args.seconds, args.py_spy):
                        await wait_until(end)
                        cpu, others = window.stop()
                inside = histogram_window(buckets, await asyncio.to_thread(scrape_buckets, server))
                drained = await drain(ledger, args.drain_seconds)
                closed = dict(ledger.closed)
        check = await verify_stored(url, set(ledger.acked))
    run = ledger.window(measured, end)
    return {
        "run": run,
        "duplicate_acks": ledger.duplicate_acks,
        "duplicate_deliveries": ledger.duplicate_deliveries,
        "retries": ledger.retries,
        "failed": dict(ledger.failed),
        "device_connections_closed": closed,
        "drain_s": drained,
        "cpu_percent": cpu,
        "busiest_other_processes": others,
        "hub_rss_peak_kib": rss.peak_kib,
        "hub_histograms": inside,
        "check": check,
    }


# -- the storm ----------------------------------------------------------------------------


async def bench_storm_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The storm alone against the connect-only `websockets` server, on the hub's core."""
    server = start_storm_baseline(SERVER_CORE)
    try:
        wait_healthy(server)
        spec = {
            "host": "127.0.0.1", "port": server.port, "path": "/connection/websocket",
            "tokens": ["-"] * args.storm, "seed": secrets.token_hex(3),
            "deadline_s": args.storm_deadline, "reply_timeout": args.storm_timeout,
        }
        with storm_process(spec) as (pipe, storm_pid):
            overflows_before = listen_overflows()
            rss_before = rss_kib(server.pid)
            window = MeasuredCpu({"server": process_tree(server.pid), "storm_clients": [storm_pid]})
            pipe.send("go")
            storm: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(
                None, pipe.recv)
            cpu, others = window.stop()
            await asyncio.sleep(1.0)
            connected = storm["connected"]
            per_connection = (rss_kib(server.pid) - rss_before) / connected if connected else 0
    finally:
        server.stop()
    return {"storm": storm, "storm_users": "none (no tokens checked)",
            "listen_overflows": listen_overflows() - overflows_before,
            "cpu_percent_storm": cpu, "busiest_other_processes": others,
            "kib_per_connection_settled": round(per_connection, 2),
            "check": {"ok": True}}


async def bench_storm(args: argparse.Namespace) -> dict[str, Any]:
    ledger = Ledger()
    run_id = secrets.token_hex(3)
    users = [f"storm-{run_id}-u{i}" for i in range(args.storm)]
    async with fresh_database(args.postgres, "storm") as url:
        await migrate(url, users if args.storm_users == "known" else [])
        with running_hub(url, args.hub_settings) as server:
            spec = {
                "host": "127.0.0.1", "port": server.port, "path": "/connection/websocket",
                "tokens": [auth.mint(server.jwt_secret, u, "athlete") for u in users],
                "seed": run_id, "deadline_s": args.storm_deadline,
                "reply_timeout": args.storm_timeout,
            }
            with storm_process(spec) as (pipe, storm_pid):
                async with live_load(server, url, args, ledger) as fleet:
                    result = await _storm_under_load(
                        args, server, fleet, ledger, pipe, storm_pid
                    )
        check = await verify_stored(url, set(ledger.acked))
    result["check"] = check
    return result


@contextlib.contextmanager
def storm_process(spec: dict[str, Any]) -> Iterator[tuple[Connection, int]]:
    """The storm's clients in a process of their own (`product_clients.storm_worker`), on the
    load core like this one; stopped on exit."""
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=storm_worker, args=(child, spec), daemon=True
    )
    process.start()
    child.close()
    try:
        if not parent.poll(120) or parent.recv() != "ready":
            raise RuntimeError("the storm process did not start")
        assert process.pid is not None
        yield parent, process.pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("close")
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)


async def _storm_under_load(
    args: argparse.Namespace,
    server: ServerProcess,
    fleet: OpenLoopFleet,
    ledger: Ledger,
    pipe: Connection,
    storm_pid: int,
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    rate = args.rate / args.athletes
    start = time.perf_counter() + 0.2
    before = start + args.warmup_seconds
    storm_at = before + args.seconds
    fleet.schedule(ledger, rate=rate, jitter=args.jitter, start=start, end=float("inf"))
    await wait_until(storm_at)
    rss_before = rss_kib(server.pid)
    overflows_before = listen_overflows()
    buckets = await asyncio.to_thread(scrape_buckets, server)
    async with RssPeak(server.pid) as rss:
        window = MeasuredCpu({**cpu_groups(server), "storm_clients": [storm_pid]})
        with py_spy(server.pid, args.py_spy_seconds or 10.0, args.py_spy):
            pipe.send("go")
            storm: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
            cpu, others = window.stop()
    rss_connected = rss_kib(server.pid)
    overflows = listen_overflows() - overflows_before
    inside = histogram_window(buckets, await asyncio.to_thread(scrape_buckets, server))
    storm_end = storm["ended"]
    after_end = storm_end + args.after_seconds
    await wait_until(after_end)
    fleet.stop()
    rss_settled = rss_kib(server.pid)
    await drain(ledger, args.drain_seconds)
    connected = storm["connected"]
    per_connection = (rss_settled - rss_before) / connected if connected else None
    return {
        "storm": storm,
        "storm_users": args.storm_users,
        "listen_overflows": overflows,
        "live_before": ledger.window(before, storm["started"]),
        "live_during": ledger.window(storm["started"], storm_end),
        "live_after": ledger.window(storm_end, after_end),
        "live_failed": dict(ledger.failed),
        "live_connections_closed": dict(ledger.closed),
        "cpu_percent_storm": cpu,
        "busiest_other_processes": others,
        "hub_rss_kib": {"before": rss_before, "all_connected": rss_connected,
                        "peak": rss.peak_kib, "settled": rss_settled},
        "kib_per_connection_settled": round(per_connection, 2) if per_connection else None,
        "hub_histograms_storm": inside,
    }


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all
    sockets of the machine: TcpExt ListenOverflows)."""
    header, values = [
        line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
        if line.startswith("TcpExt:")
    ][:2]
    return int(dict(zip(header, values, strict=True))["ListenOverflows"])


# -- report -------------------------------------------------------------------------------


def _ms(q: dict[str, float]) -> str:
    return " / ".join(f"{q[k]:,.1f}" for k in ("p50", "p99", "max")) if q else "-"


def render_load(result: dict[str, Any]) -> str:
    run, cpu, check = result["run"], result["cpu_percent"], result["check"]
    rows = [
        ("offered events/s (sent, by slot)", f"{run['offered_per_s']:,.0f}"),
        ("achieved acks/s", f"{run['acked_per_s']:,.0f}"),
        ("ack ms p50 / p99 / max", _ms(run["ack_ms"])),
        ("device -> trainer ms p50 / p99 / max", _ms(run["device_to_trainer_ms"])),
        ("schedule lag ms p50 / p99 / max", _ms(run["schedule_lag_ms"])),
        ("not acknowledged", f"{run['not_acked']:,}"),
        ("acknowledged, not delivered", f"{run['acked_not_delivered']:,}"),
        ("duplicate acks / deliveries",
         f"{result['duplicate_acks']} / {result['duplicate_deliveries']}"),
        ("retries / failed", f"{result['retries']} / {result['failed'] or 0}"),
        ("device connections closed", str(result["device_connections_closed"] or 0)),
        ("stored exactly once", "yes" if check["ok"] else f"NO {check}"),
        ("events per transaction", str(check["events_per_transaction"])),
        ("hub cpu % / rss peak MiB",
         f"{cpu['cpu_hub']} / {result['hub_rss_peak_kib'] / 1024:,.0f}"),
        ("load cpu % (this process)", str(cpu["cpu_load"])),
        ("postgres cpu %", str(cpu["cpu_postgres"])),
        ("other programs cpu %", str(cpu["cpu_other"])),
        ("core0 / core1 busy %", f"{cpu['core0']} / {cpu['core1']}"),
        *_histogram_rows(result["hub_histograms"]),
    ]
    return _table(rows)


def _histogram_rows(found: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    return [
        (f"hub {name}: p50 / p99 / max under (bucket)",
         f"{h['p50_under']:g} / {h['p99_under']:g} / {h['max_under']:g} ({h['count']:,.0f})")
        for name, h in found.items()
    ]


def render_storm(result: dict[str, Any]) -> str:
    storm, cpu = result["storm"], result["cpu_percent_storm"]
    rows = [
        ("storm clients (users)", f"{storm['clients']:,} ({result['storm_users']})"),
        ("connected", f"{storm['connected']:,}"),
        ("all connected after s", str(storm["all_connected_s"] or "NOT ALL")),
        ("connects/s", f"{storm['connects_per_s']:,.0f}"),
        ("connect ms p50 / p99 / max (from storm start)", _ms(storm["connect_ms"])),
        ("connected at first attempt", f"{storm['first_attempt_ok']:,}"),
        ("errors", str(storm["errors"] or 0)),
        ("kernel listen-queue overflows (SYNs dropped)", f"{result['listen_overflows']:,}"),
        ("gave up", str(storm["gave_up"])),
        ("hub KiB per connection (settled)", str(result["kib_per_connection_settled"])),
        ("hub rss MiB before / peak / settled",
         " / ".join(f"{result['hub_rss_kib'][k] / 1024:,.0f}"
                    for k in ("before", "peak", "settled"))),
        ("hub cpu % during storm", str(cpu["cpu_hub"])),
        ("load cpu % during storm (live / storm clients)",
         f"{cpu['cpu_load']} / {cpu['cpu_storm_clients']}"),
        ("postgres cpu % during storm", str(cpu["cpu_postgres"])),
        ("other programs cpu % during storm", str(cpu["cpu_other"])),
    ]
    for phase in ("before", "during", "after"):
        live = result[f"live_{phase}"]
        rows.append((f"live ack ms p50 / p99 / max {phase}", _ms(live["ack_ms"])))
        rows.append((f"live not acked / lag p99 ms {phase}",
                     f"{live['not_acked']} / {live['schedule_lag_ms'].get('p99', '-')}"))
    rows.append(("live stored exactly once", "yes" if result["check"]["ok"] else "NO"))
    rows.extend(_histogram_rows(result["hub_histograms_storm"]))
    return _table(rows)


def render_storm_baseline(result: dict[str, Any]) -> str:
    storm, cpu = result["storm"], result["cpu_percent_storm"]
    return _table([
        ("storm clients (connect-only websockets server)", f"{storm['clients']:,}"),
        ("connected", f"{storm['connected']:,}"),
        ("all connected after s", str(storm["all_connected_s"] or "NOT ALL")),
        ("connects/s", f"{storm['connects_per_s']:,.0f}"),
        ("connect ms p50 / p99 / max (from storm start)", _ms(storm["connect_ms"])),
        ("errors", str(storm["errors"] or 0)),
        ("kernel listen-queue overflows (SYNs dropped)", f"{result['listen_overflows']:,}"),
        ("server KiB per connection", str(result["kib_per_connection_settled"])),
        ("server cpu % / storm clients cpu %", f"{cpu['cpu_server']} / {cpu['cpu_storm_clients']}"),
    ])


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, help="events/s offered in total "
                        "(default 5000; 500 in storm mode and with --quick)")
    parser.add_argument("--athletes", type=int, help="default 1000 (100 in storm mode, quick)")
    parser.add_argument("--trainers", type=int, help="default 100 (10 in storm mode, quick)")
    parser.add_argument("--clients-per-trainer", type=int, default=10)
    parser.add_argument("--jitter", type=float, default=0.5,
                        help="each send up to this share of a period after its nominal slot")
    parser.add_argument("--seconds", type=float,
                        help="measured window (default 10, quick 3); in storm mode the live "
                        "window before the storm")
    parser.add_argument("--warmup-seconds", type=float, help="default 3, quick 1")
    parser.add_argument("--drain-seconds", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1,
                        help="2: two nodes on a private Redis, devices on one, trainers on the "
                        "other (load mode)")
    parser.add_argument("--storm", type=int, default=0, help="clients connecting at once")
    parser.add_argument("--storm-users", choices=("known", "new"), default="known")
    parser.add_argument("--storm-server", choices=("hub", "websockets"), default="hub",
                        help="websockets: the storm alone against a connect-only baseline")
    parser.add_argument("--storm-timeout", type=float, default=10.0,
                        help="per attempt: handshake plus connect reply, as an SDK's timeout")
    parser.add_argument("--storm-deadline", type=float, default=60.0,
                        help="retries stop this long after the storm started")
    parser.add_argument("--after-seconds", type=float, default=3.0,
                        help="live load measured after the storm")
    parser.add_argument("--hub", action="append", default=[], metavar="NAME=VALUE",
                        help="a HUB_* setting for the hub (repeatable)")
    parser.add_argument("--py-spy", metavar="PATH",
                        help="profile the hub with py-spy over the measured window (storm: "
                        "from the storm's start)")
    parser.add_argument("--py-spy-seconds", type=float, default=0.0,
                        help="how long to profile (default: the measured window; storm 10 s)")
    parser.add_argument("--postgres", default=DEFAULT_ADMIN_URL,
                        help="admin URL to create and drop the bench database")
    parser.add_argument("--quiet-wait-seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="smoke test: small and short")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    if args.storm and args.nodes != 1:
        parser.error("--storm runs on one node")
    small = args.quick or args.storm
    args.rate = args.rate or (500.0 if small else 5000.0)
    args.athletes = args.athletes or (100 if small else 1000)
    args.trainers = args.trainers if args.trainers is not None else (10 if small else 100)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup_seconds = args.warmup_seconds or (1.0 if args.quick else 3.0)
    args.hub_settings = {}
    for item in args.hub:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("HUB_"):
            parser.error(f"--hub takes HUB_NAME=VALUE, got {item!r}")
        args.hub_settings[name] = value
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    background = await wait_quiet(args.quiet_wait_seconds)
    if args.storm and args.storm_server == "websockets":
        print(f"[storm] {args.storm:,} clients at once against the connect-only websockets "
              "server", flush=True)
        result = await bench_storm_baseline(args)
    elif args.storm:
        print(f"[storm] {args.storm:,} {args.storm_users} users at once, live load "
              f"{args.rate:g} events/s over {args.athletes} athletes", flush=True)
        result = await bench_storm(args)
    else:
        where = "one node" if args.nodes == 1 else f"{args.nodes} nodes on Redis"
        print(f"[load] {args.rate:g} events/s offered over {args.athletes} athletes, "
              f"{args.trainers} trainers, {args.seconds:g} s measured, {where}", flush=True)
        result = await bench_load(args)
    return {"background_busy_percent": background, **result}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_bench(run(args), "the hub was stopped and the database dropped")
    if result is None:
        return 130
    print()
    if args.storm and args.storm_server == "websockets":
        print(render_storm_baseline(result))
    else:
        print(render_storm(result) if args.storm else render_load(result))
    print(f"background before: {result['background_busy_percent']}")
    print(f"busiest other processes: {result['busiest_other_processes']}")
    if args.json:
        document = {
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "postgres")},
            "environment": environment(),
            "result": result,
        }
        write_report(args.json, document)
    return 0 if result["check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
