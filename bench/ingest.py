"""Ingest benchmark: acknowledged set events/s into PostgreSQL, the hub against plain asyncpg.

Simulated devices publish set events into their athletes' `session:` channels in a closed
loop: each sends its next event only once the previous one was acknowledged, and the hub
acknowledges only after the commit. The devices are `ingest_devices.LeanDevice`s: the JSON
protocol of `simulator.Device` on the fan-out benchmark's callback client (`wsclient.py`).
`simulator.Device`'s coroutine per device costs ~47 µs of load-core CPU per acknowledged
event; taken from core 1, that time pushes PostgreSQL onto the hub's core 0, and the benchmark
would measure the load generator as much as the hub.

The baseline is what the hub's grouped commits replace: the same rows and the same closed
loop per device, but every event committed in its own transaction by plain asyncpg (one
autocommitted `INSERT … ON CONFLICT DO NOTHING`), with no WebSocket, protocol, validation,
session lock or running totals. It runs twice:

* `baseline`: one connection, as the target's own figure describes it ("plain asyncpg
  inserting the same rows one transaction per event (about 2,000/s here)"; one connection
  measures 1,900-2,000/s on this machine, a pool of 10 already ~5,700/s);
* `pooled`: a pool of `--pool-size` connections (20: the best of 10/20/40/80 measured here),
  where PostgreSQL commits concurrent transactions with one WAL flush: the strongest
  one-transaction-per-event client, reported beside it as the stricter comparison.

The targets: the hub at 3x the baseline's rate or more, with p99 ack latency under 50 ms.

Each side gets a fresh database with the hub's schema (migrated by the project, as the hub
does at start), dropped afterwards. After each run every stored row is matched against the
acknowledgements: each acked event stored exactly once, nothing stored that was not acked.
Events per transaction is read back from the rows themselves (distinct `xmin`).

Placement: the hub is pinned to core 0; this process (the devices, or the baseline's asyncpg
client) to core 1. PostgreSQL is not pinned, for either side: it runs wherever the kernel
puts it, and its CPU use is reported beside the others.

Run: `.venv/bin/python bench/ingest.py --json ingest.json` (or `--quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from fanout import LOAD_CORE, SERVER_CORE, run_bench, wait_quiet, write_report
from ingest_devices import LeanFleet
from procstat import CpuWindow, process_tree, rss_kib
from servers import REPO_ROOT, ServerProcess, start_hub, wait_healthy
from sqlalchemy.engine import make_url

from hub import auth
from models import queries
from models.db import Database
from simulator import DeviceReport, PhaseResult
from simulator.device import set_event

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_RATIO = 3.0
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_P99_MS = 50.0
SIDES = ("baseline", "pooled", "hub")

INSERT_EVENT = """
INSERT INTO session_events
    (session_id, user_id, event_id, kind, device, server_ts, exercise, reps, weight_kg, ts)
VALUES ($1, $2, $3, 'set', $4, $5, $6, $7, $8, $9)
ON CONFLICT (user_id, event_id) DO NOTHING
"""
"""The row the hub stores for a set (rpe and duration_s are not sent, so NULL on both sides)."""


# -- databases ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, label: str) -> AsyncIterator[str]:
    """An empty `fitsync_bench_<random>_<label>` database, dropped on exit even if in use."""
    name = f"fitsync_bench_{secrets.token_hex(4)}_{label}"
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def prepare_baseline_schema(url: str, athletes: list[str]) -> list[str]:
    """Migrate as the hub would and start one session per athlete; returns the session ids."""
    db = Database(url)
    await db.start()
    try:
        return [(await queries.start_session(db, a, "bench"))["session_id"] for a in athletes]
    finally:
        await db.close()


async def verify(url: str, acked: set[str]) -> dict[str, Any]:
    """Every acknowledged event stored once, no row without an acknowledgement.

    `xmin` is the id of the transaction that inserted a row, so the number of distinct ones
    is the number of commits that stored events.
    """
    conn = await asyncpg.connect(url, timeout=5)
    try:
        rows = await conn.fetch("SELECT event_id, xmin::text AS tx FROM session_events")
    finally:
        await conn.close()
    stored = [r["event_id"] for r in rows]
    unique = set(stored)
    transactions = len({r["tx"] for r in rows})
    check = {
        "acked": len(acked),
        "rows": len(stored),
        "duplicates": len(stored) - len(unique),
        "missing": len(acked - unique),
        "stored_unacked": len(unique - acked),
        "transactions": transactions,
        "events_per_transaction": round(len(stored) / transactions, 1) if transactions else 0,
    }
    check["ok"] = len(stored) == len(acked) and not check["missing"] and not check["duplicates"]
    return check


class MeasuredCpu:
    """CPU of the measured groups and of each core from now to `stop()`, plus what went
    elsewhere: `cpu_other` (busy core time that neither interrupts nor the groups explain)
    and the processes behind it."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = CpuWindow(groups)
        self._others = BusiestOthers([pid for pids in groups.values() for pid in pids])
        self._groups.start()
        self._others.start()

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        cpu = self._groups.stop()
        cores = sum(v for k, v in cpu.items() if k.startswith("core") and not k.endswith("_irq"))
        irq = sum(v for k, v in cpu.items() if k.endswith("_irq"))
        groups = sum(v for k, v in cpu.items() if k.startswith("cpu_"))
        cpu["cpu_other"] = round(max(0.0, cores - irq - groups), 1)
        return cpu, self._others.stop()


class BusiestOthers:
    """Which unmeasured processes (kernel threads included) used CPU during a window.

    `cpu_other` says how much time went elsewhere; this says where: another program, or
    kernel threads working for the benchmark (block I/O and journal threads flushing WAL).
    """

    def __init__(self, measured: list[int]) -> None:
        self._measured = set(measured)
        self._before: dict[int, tuple[str, int]] = {}
        self._wall = 0.0

    def start(self) -> None:
        self._wall = time.monotonic()
        self._before = _all_ticks()

    def stop(self, top: int = 4) -> dict[str, float]:
        """`<comm>[<pid>]` → percent of one core, for the `top` busiest."""
        wall = time.monotonic() - self._wall
        used = sorted(
            (
                (ticks - self._before.get(pid, (comm, 0))[1], f"{comm}[{pid}]")
                for pid, (comm, ticks) in _all_ticks().items()
                if pid not in self._measured
            ),
            reverse=True,
        )
        return {name: round(100 * t / TICKS / wall, 1) for t, name in used[:top] if t > 0}


def _all_ticks() -> dict[int, tuple[str, int]]:
    """utime+stime of every process: pid → (comm, ticks)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            text = stat.read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            found[int(stat.parent.name)] = (comm, int(fields[11]) + int(fields[12]))
    return found


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process: unpinned, it works for whichever side is running."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if comm.read_text().strip() == "postgres":
                pids.append(int(comm.parent.name))
    return pids


# -- the baseline ----------------------------------------------------------------------------


class PlainDevice:
    """A device whose events go straight into PostgreSQL, one autocommitted INSERT each."""

    def __init__(self, device_id: str, user: str, session_id: str) -> None:
        self.device_id = device_id
        self.user = user
        self.session_id = session_id
        self._rng = random.Random(device_id)
        self._seq = 0

    async def run(self, pool: asyncpg.Pool, seconds: float, rate: float) -> DeviceReport:
        """Closed loop, paced like `simulator.Device.run`: the next insert after the last
        commit, and not before its slot when `rate` (events/s) is set."""
        report = DeviceReport(self.device_id, self.session_id)
        start = time.perf_counter()
        stop_at = start + seconds
        sent = 0
        while time.perf_counter() < stop_at:
            if rate > 0:
                await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
            sent += 1
            self._seq += 1
            now_ms = int(time.time() * 1000)
            event = set_event(f"{self.device_id}-{self._seq}", self._rng, now_ms)
            sent_at = time.perf_counter()
            report.first_send = report.first_send or sent_at
            await pool.execute(
                INSERT_EVENT,
                self.session_id,
                self.user,
                event["event_id"],
                self.device_id,
                now_ms,
                event["exercise"],
                event["reps"],
                event["weight_kg"],
                event["ts"],
            )
            report.record_ack(event, sent_at, time.perf_counter())
        return report


async def run_plain(
    devices: list[PlainDevice], pool: asyncpg.Pool, seconds: float, rate: float
) -> PhaseResult:
    reports = await asyncio.gather(*(d.run(pool, seconds, rate) for d in devices))
    return PhaseResult(list(reports))


async def bench_baseline(args: argparse.Namespace, pool_size: int) -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    athletes = [f"base-{run_id}-a{i}" for i in range(args.devices // args.devices_per_athlete)]
    async with fresh_database(args.postgres, "baseline") as url:
        sessions = await prepare_baseline_schema(url, athletes)
        devices = [
            PlainDevice(f"{athlete}-d{j}", athlete, session)
            for athlete, session in zip(athletes, sessions, strict=True)
            for j in range(args.devices_per_athlete)
        ]
        # asyncpg replaces a connection after 50,000 queries by default, resets included: on
        # one connection that happens mid-run, costing the baseline a reconnect and hiding
        # its backend's CPU (a new process).
        pool = await asyncpg.create_pool(
            url, min_size=pool_size, max_size=pool_size, max_queries=2**31 - 1
        )
        try:
            warmup = await run_plain(devices, pool, args.warmup_seconds, args.rate)
            window = MeasuredCpu({"load": [os.getpid()], "postgres": postgres_pids()})
            result = await run_plain(devices, pool, args.seconds, args.rate)
            cpu, others = window.stop()
        finally:
            await pool.close()
        check = await verify(url, set(warmup.acked_ids()) | set(result.acked_ids()))
    return side_report(warmup, result, (cpu, others), check, pool_size=pool_size)


# -- the hub --------------------------------------------------------------------------------


HUB_SETTINGS = {"HUB_COMMANDS_PER_SECOND": "1000"}
"""The default limit of 100 commands/s per connection would cap 200 closed-loop devices at
20,000 acks/s and turn the benchmark into a test of the rate limiter; a wearable sends a few
events per second, this bench's devices up to a hundred."""


@contextlib.contextmanager
def running_hub(database_url: str) -> Iterator[ServerProcess]:
    server = start_hub(SERVER_CORE, database_url, HUB_SETTINGS)
    try:
        wait_healthy(server)
        yield server
    finally:
        server.stop()


async def bench_hub(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_database(args.postgres, "hub") as url:
        with running_hub(url) as server:

            def token(athlete: str, device: str) -> str:
                return auth.mint(server.jwt_secret, athlete, "device", device=device)

            ws_url = f"ws://127.0.0.1:{server.port}/connection/websocket"
            async with LeanFleet(
                ws_url,
                token,
                athletes=args.devices // args.devices_per_athlete,
                devices_per_athlete=args.devices_per_athlete,
                title="bench",
            ) as fleet:
                warmup = await fleet.run(seconds=args.warmup_seconds, rate=args.rate)
                window = MeasuredCpu(
                    {
                        "hub": process_tree(server.pid),
                        "load": [os.getpid()],
                        "postgres": postgres_pids(),
                    }
                )
                result = await fleet.run(seconds=args.seconds, rate=args.rate)
                cpu, others = window.stop()
            rss = rss_kib(server.pid)
        check = await verify(url, set(warmup.acked_ids()) | set(result.acked_ids()))
    return side_report(warmup, result, (cpu, others), check, hub_rss_kib=rss)


# -- report ---------------------------------------------------------------------------------


def side_report(
    warmup: PhaseResult,
    result: PhaseResult,
    cpu: tuple[dict[str, float], dict[str, float]],
    check: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """One side's entry in the results: the measured run, its CPU (groups and cores, and the
    busiest other processes) and the stored-once check, plus what is particular to the side."""
    groups, others = cpu
    return {
        "run": result.summary(),
        "warmup_acked": warmup.acked,
        "cpu_percent": groups,
        "busiest_other_processes": others,
        "check": check,
        **extra,
    }


ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("background core0 % (before)", ("background_busy_percent", "core0")),
    ("background core1 % (before)", ("background_busy_percent", "core1")),
    ("acked set events/s", ("run", "acks_per_s")),
    ("acked in the run", ("run", "acked")),
    ("ack latency p50 ms", ("run", "latency_ms", "p50")),
    ("ack latency p99 ms", ("run", "latency_ms", "p99")),
    ("ack latency max ms", ("run", "latency_ms", "max")),
    ("retries", ("run", "retries")),
    ("events per transaction", ("check", "events_per_transaction")),
    ("rows stored (warm-up + run)", ("check", "rows")),
    ("acked (warm-up + run)", ("check", "acked")),
    ("stored exactly once", ("check", "ok")),
    ("hub cpu %", ("cpu_percent", "cpu_hub")),
    ("load cpu % (this process)", ("cpu_percent", "cpu_load")),
    ("postgres cpu %", ("cpu_percent", "cpu_postgres")),
    ("other programs cpu %", ("cpu_percent", "cpu_other")),
    ("core0 busy %", ("cpu_percent", "core0")),
    ("core1 busy %", ("cpu_percent", "core1")),
]


def lookup(result: dict[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def render_table(results: dict[str, dict[str, Any]]) -> str:
    targets = [t for t in SIDES if t in results]
    lines = [["metric", *targets]]
    lines += [[label, *(_cell(lookup(results[t], path)) for t in targets)] for label, path in ROWS]
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in lines
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, met or not, from whatever sides ran; the hub's ratio to the pooled
    baseline beside them, without a target."""
    out: dict[str, Any] = {}
    hub_rate = lookup(results.get("hub"), ("run", "acks_per_s"))
    base_rate = lookup(results.get("baseline"), ("run", "acks_per_s"))
    pooled_rate = lookup(results.get("pooled"), ("run", "acks_per_s"))
    if hub_rate and base_rate:
        ratio = round(hub_rate / base_rate, 2)
        out["ratio_hub_over_baseline"] = ratio
        out["ratio_target_met"] = ratio >= TARGET_RATIO
    if hub_rate and pooled_rate:
        out["ratio_hub_over_pooled"] = round(hub_rate / pooled_rate, 2)
    p99 = lookup(results.get("hub"), ("run", "latency_ms", "p99"))
    if p99 is not None:
        out["hub_p99_ms"] = p99
        out["p99_target_met"] = p99 < TARGET_P99_MS
    out["all_checks_ok"] = all(r["check"]["ok"] for r in results.values())
    return out


def render_verdict(found: dict[str, Any], pool_size: int) -> str:
    lines = []
    if "ratio_hub_over_baseline" in found:
        met = "met" if found["ratio_target_met"] else "NOT met"
        lines.append(
            f"hub/baseline acks/s: {found['ratio_hub_over_baseline']}x "
            f"(target >= {TARGET_RATIO:g}x): {met}"
        )
    if "ratio_hub_over_pooled" in found:
        lines.append(
            f"hub/pooled baseline ({pool_size} connections) acks/s: "
            f"{found['ratio_hub_over_pooled']}x (the stricter comparison, no target)"
        )
    if "hub_p99_ms" in found:
        met = "met" if found["p99_target_met"] else "NOT met"
        lines.append(
            f"hub p99 ack latency: {found['hub_p99_ms']} ms (target < {TARGET_P99_MS:g} ms): {met}"
        )
    ok = "yes" if found["all_checks_ok"] else "NO: see `check` in the results"
    lines.append(f"every acked event stored exactly once: {ok}")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Machine, versions, and which source the hub ran (uncommitted changes included)."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "cpu_model": models[0] if models else platform.processor(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "asyncpg": asyncpg.__version__,
        "uvloop": uvloop.__version__,
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
        "git": _git_state(),
    }


def _git_state() -> dict[str, str]:
    def git(*argv: str) -> str:
        """Empty output outside a git checkout: the results stay usable, just unlabelled."""
        done = subprocess.run(
            ["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "hub", "channels", "models")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_in_hub": changed}


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=(*SIDES, "all"), default="all")
    parser.add_argument("--devices", type=int, help="simulated devices (default 200, quick 50)")
    parser.add_argument(
        "--devices-per-athlete", type=int, default=1, help="devices sharing one athlete's session"
    )
    parser.add_argument("--seconds", type=float, help="measured run (default 10, quick 3)")
    parser.add_argument("--warmup-seconds", type=float, help="before it (default 2, quick 1)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="events/s per device on both sides (default 0: as fast as acknowledgements allow)",
    )
    parser.add_argument(
        "--pool-size", type=int, default=20, help="asyncpg pool size of the pooled baseline"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("HUB_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="admin URL to create and drop the bench databases",
    )
    parser.add_argument(
        "--quiet-wait-seconds",
        type=float,
        default=30.0,
        help="wait up to this long for idle cores before each side",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small and short")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    args.devices = args.devices or (50 if args.quick else 200)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup_seconds = args.warmup_seconds or (1.0 if args.quick else 2.0)
    if args.devices % args.devices_per_athlete:
        parser.error("--devices must be a multiple of --devices-per-athlete")
    return args


async def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    sides = {
        "baseline": lambda: bench_baseline(args, pool_size=1),
        "pooled": lambda: bench_baseline(args, pool_size=args.pool_size),
        "hub": lambda: bench_hub(args),
    }
    chosen = SIDES if args.only == "all" else (args.only,)
    results = {}
    for side in chosen:
        background = await wait_quiet(args.quiet_wait_seconds)
        pace = f"{args.rate:g} events/s each" if args.rate else "as fast as acked"
        print(f"[{side}] {args.devices} devices ({pace}), {args.seconds:g} s", flush=True)
        results[side] = {"background_busy_percent": background, **await sides[side]()}
    return results


def print_stopped(side: str, stopped: list[str]) -> None:
    """Devices that stopped early (a closed connection, an overdue reply) offered less load
    than the others, so the run's rate understates the side: say so next to the table."""
    if stopped:
        print(f"WARNING: {len(stopped)} {side} devices stopped early, first: {stopped[0]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_bench(run_all(args), "the hub was stopped and the databases dropped")
    if results is None:
        return 130
    found = verdict(results)
    print()
    print(render_table(results))
    for side, result in results.items():
        print(f"busiest other processes during {side}: {result['busiest_other_processes']}")
        print_stopped(side, result["run"]["stopped"])
    print()
    print(render_verdict(found, args.pool_size))
    if args.json:
        document = {
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "postgres")},
            "environment": environment(),
            "results": results,
            "verdict": found,
        }
        write_report(args.json, document)
    return 0 if found["all_checks_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
