"""AI coach benchmark: many answers streaming at once, each watched by several subscribers.

A scripted OpenAI-compatible server (tests/llm_server.py, its own process on the load core)
streams every answer at `--rate` tokens per second; `--answers` athletes, each watched by
`--watchers` connections on its `coach:` channel (raw WebSocket clients speaking the
Centrifuge JSON protocol, bench/wsclient.py), ask `--rounds` questions each: all at once (the
worst burst), or each first within `--ask-spread` seconds, and the next one as soon as the
answer before has reached every watcher. Beside it one device publishes set events into a live
session on its own clock (`--live-rate` a second, open loop) and times each acknowledgement,
on the same hub or (`--live-node own`) on a second hub process of its own on the same core.
The hub runs pinned to core 0, everything else to core 1. It runs once per coalescing window in
`--windows` (`0`: one publication per model chunk).

Reported per window:
- added latency: from the moment the model server wrote a token to the moment a subscriber
  read the delta holding it (p50 / p99 / max, and p99 beyond the window), the p99 of each
  answer's first tenth of tokens (they stream while the round's asks are handled) and of the
  rest (steady streaming), and the
  same from the model's write to the hub's publication of the delta (the hub's clock, whole
  ms: without the subscribers' own delay on the load core);
- from sending a question to reading its answer's first delta (p50 / p99 over answers: the
  hub's ask, prompt and model request; the scripted model sends its first token at once);
- publications per answer (deltas), tokens per answer, and the most deltas of one answer a
  subscriber first read within any one window (1: at most one publication per window; the
  hub spaces them by the window, a reader that falls behind reads two in one go), and the
  closest two consecutive deltas of one answer by their publication times, the hub's own
  clock in whole ms (at least the window less 1 ms: never two publications in one window);
- hub CPU per answer (ms of core time) and the hub core's load, and the hub's own stalls
  (garbage collections, loop lag over 25 and 100 ms) from its metrics;
- the live session's acknowledgement latency during the coach load and, first, alone (after
  a second of warm-up, for `--quiet-seconds`).

    .venv/bin/python bench/coach.py --json coach.json
    .venv/bin/python bench/coach.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/coach.py --answers 10 --rounds 1 --tokens 100   # a short run
    .venv/bin/python bench/coach.py --ask-spread 2   # athletes asking on their own clocks
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import uvloop
from fanout import LOAD_CORE, SERVER_CORE, prepare_process, wait_quiet
from ingest import fresh_database
from procstat import CpuWindow, process_tree
from prometheus_client.parser import text_string_to_metric_families
from servers import (
    REPO_ROOT,
    ServerProcess,
    free_port,
    pinned,
    start_coach_baseline,
    start_hub,
    wait_healthy,
)
from wsclient import WebSocketClient, open_websocket

from hub import auth

sys.path.insert(0, str(REPO_ROOT))  # the scripted model server lives with the tests
from tests.llm_server import tokens_of

HUB_PATH = "/connection/websocket"
PING = b"{}"
LIVE_WARMUP_SECONDS = 1.0
"""The live session's first events are not counted (the hub's first commits open connections)."""


# -- the scripted model server -----------------------------------------------------------------


@contextlib.contextmanager
def running_model(rate: float, tokens: int) -> Iterator[tuple[str, str]]:
    """tests/llm_server.py on the load core; yields (its base URL, the answer it streams)."""
    text = " ".join(f"w{i % 100}" for i in range(tokens))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "tests.llm_server", "--port", str(port), "--text", text,
               "--tokens-per-second", str(rate)]
    process = subprocess.Popen(pinned(command, LOAD_CORE), cwd=REPO_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/_requests", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the scripted model server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", text
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- clients -------------------------------------------------------------------------------------


class Connection:
    """One raw Centrifuge JSON connection: commands with futures, pushes to a callback."""

    def __init__(self, on_pub: Any = None) -> None:
        self.client: WebSocketClient | None = None
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._on_pub = on_pub

    async def open(self, port: int, token: str) -> None:
        self.client = await open_websocket("127.0.0.1", port, HUB_PATH, self._on_message)
        await self.command("connect", {"token": token, "name": "bench"})

    def command(self, kind: str, body: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        assert self.client is not None
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        self.client.send_text(orjson.dumps({"id": self._next_id, kind: body}))
        return future

    def _on_message(self, message: bytes, now_ns: int) -> None:
        for line in message.split(b"\n"):
            line = line.strip()
            if line == PING:
                assert self.client is not None
                self.client.send_text(PING)
            elif line:
                reply = orjson.loads(line)
                future = self._waiting.pop(reply.get("id", 0), None)
                if future is not None and not future.done():
                    future.set_result(reply)
                elif "push" in reply and "pub" in reply["push"] and self._on_pub is not None:
                    pub = reply["push"]["pub"]
                    self._on_pub(pub["data"], now_ns, pub.get("time", 0))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


@dataclass
class Received:
    """What the watchers of all answers read: per reply id, (index, text, read time ns), and
    each delta's publication time by the hub's clock (ms), by reply id and index."""

    deltas: dict[str, list[tuple[int, str, int]]] = field(default_factory=dict)
    published_ms: dict[str, dict[int, int]] = field(default_factory=dict)
    watchers: int = 1
    finished: dict[str, int] = field(default_factory=dict)
    """Terminal publications read, per reply id (one per watcher)."""
    seen_by_all: dict[str, asyncio.Event] = field(default_factory=dict)
    """Set once every watcher has read the answer's terminal publication (`finished_event`)."""
    asked_ns: dict[str, int] = field(default_factory=dict)
    """When each question was sent (wall clock ns, as the read times), by reply id."""

    def on_pub(self, data: dict[str, Any], now_ns: int, published_ms: int) -> None:
        kind = data.get("type")
        if kind == "delta":
            self.deltas.setdefault(data["reply_id"], []).append(
                (data["index"], data["text"], now_ns))
            self.published_ms.setdefault(data["reply_id"], {})[data["index"]] = published_ms
        elif kind in ("done", "error", "cancelled"):
            reply_id = data["reply_id"]
            self.finished[reply_id] = self.finished.get(reply_id, 0) + 1
            if self.finished[reply_id] >= self.watchers:
                self.finished_event(reply_id).set()

    def finished_event(self, reply_id: str) -> asyncio.Event:
        return self.seen_by_all.setdefault(reply_id, asyncio.Event())


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        raise RuntimeError(f"hub replied {reply['error']}")
    return reply


class LiveDevice:
    """A device streaming set events into its live session on its own clock (open loop: it
    does not wait for an acknowledgement before the next event), timing each acknowledgement
    from its event's send."""

    def __init__(self, rate: float) -> None:
        self.connection = Connection()
        self.session = ""
        self.rate = rate
        self.acks: list[tuple[float, float]] = []
        """(sent at, on the monotonic clock; ack latency in ms), in the order acks came."""
        self.refused: list[dict[str, Any]] = []
        """Replies that were errors: the bench fails with them once the device stops."""
        self._seq = 0

    async def open(self, server: ServerProcess) -> None:
        token = auth.mint(server.jwt_secret, "live-athlete", "device", device="live-watch")
        await self.connection.open(server.port, token)
        started = ok(await self.connection.command(
            "rpc", {"method": "session.start", "data": {"title": "bench"}}))
        self.session = started["rpc"]["data"]["session_id"]

    async def stream(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = 1 / self.rate
        next_at = loop.time()
        waiting: set[asyncio.Future[dict[str, Any]]] = set()
        while not stop.is_set():
            self._seq += 1
            event = {"type": "set", "event_id": f"e{self._seq}", "exercise": "squat",
                     "reps": 5, "weight_kg": 100}
            reply = self.connection.command(
                "publish", {"channel": f"session:{self.session}", "data": event})
            reply.add_done_callback(self._timer(time.monotonic()))
            waiting.add(reply)
            reply.add_done_callback(waiting.discard)
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
        if waiting:
            await asyncio.wait(waiting, timeout=10)
        if self.refused:
            raise RuntimeError(f"the hub refused {len(self.refused)} live events: "
                               f"{self.refused[0]['error']}")

    def _timer(self, sent: float) -> Any:
        def acked(reply: asyncio.Future[dict[str, Any]]) -> None:
            if "error" in reply.result():
                self.refused.append(reply.result())
            else:
                self.acks.append((sent, (time.monotonic() - sent) * 1000))
        return acked

    def latencies(self, start: float, end: float) -> list[float]:
        """Ack latencies of the events sent in [start, end)."""
        return [ms for sent, ms in self.acks if start <= sent < end]


# -- one window setting --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_window(args: argparse.Namespace, window_ms: float) -> dict[str, Any]:
    if not args.postgres:
        return await bench_window_on(args, window_ms, None)
    async with fresh_database(args.postgres, "coach") as url:
        return await bench_window_on(args, window_ms, url)


async def bench_window_on(args: argparse.Namespace, window_ms: float,
                          database_url: str | None) -> dict[str, Any]:
    with running_model(args.rate, args.tokens) as (model_url, answer_text):
        settings = {
            "HUB_COACH_API_KEY": "bench", "HUB_COACH_BASE_URL": f"{model_url}/v1",
            "HUB_COACH_COALESCE_MS": str(window_ms), "HUB_COACH_ASKS_PER_MINUTE": "100000",
            "HUB_COACH_MAX_TOKENS": str(args.tokens + 10),
        }
        if args.server == "baseline":
            server = start_coach_baseline(SERVER_CORE, database_url, settings)
        else:
            server = start_hub(SERVER_CORE, database_url, settings)
        servers = [server]
        try:
            wait_healthy(server)
            live_server = server
            if args.live_node == "own":
                # The same core and database server; nothing shared between the two processes
                # (a deployment would add Redis between them for the trainers' views).
                live_server = start_hub(SERVER_CORE, database_url)
                servers.append(live_server)
                wait_healthy(live_server)
            return await measure(args, server, live_server, model_url, answer_text, window_ms)
        except BaseException:
            for started in servers:
                print(f"{started.name} log, last lines:\n{started.log_tail()}", file=sys.stderr)
            raise
        finally:
            for started in servers:
                started.stop()


async def measure(args: argparse.Namespace, server: ServerProcess, live_server: ServerProcess,
                  model_url: str, answer_text: str, window_ms: float) -> dict[str, Any]:
    received = Received(watchers=args.watchers)
    athletes = [f"athlete-{n}" for n in range(args.answers)]
    watchers: dict[str, list[Connection]] = {}
    for athlete in athletes:
        token = auth.mint(server.jwt_secret, athlete, "athlete")
        watchers[athlete] = []
        for _ in range(args.watchers):
            connection = Connection(received.on_pub)
            await connection.open(server.port, token)
            ok(await connection.command("subscribe", {"channel": f"coach:{athlete}"}))
            watchers[athlete].append(connection)
    live = LiveDevice(args.live_rate)
    await live.open(live_server)

    stop = asyncio.Event()
    streaming = asyncio.create_task(live.stream(stop))
    alone_from = time.monotonic() + LIVE_WARMUP_SECONDS
    await asyncio.sleep(LIVE_WARMUP_SECONDS + args.quiet_seconds)

    mono_minus_wall_ns = time.monotonic_ns() - time.time_ns()
    cpu = CpuWindow({"hub": process_tree(server.pid)})
    cpu.start()
    started = time.monotonic()
    asked: dict[str, str] = {}
    spread = random.Random(7)
    await asyncio.gather(*(
        athlete_asks(args, watchers[a][0], a, spread.uniform(0, args.ask_spread), received, asked)
        for a in athletes))
    wall = time.monotonic() - started
    busy = cpu.stop()
    stop.set()
    await streaming
    alone = live.latencies(alone_from, started)
    during = live.latencies(started, started + wall)
    for connections in watchers.values():
        for connection in connections:
            connection.close()
    live.connection.close()

    async with httpx.AsyncClient(timeout=30) as http:
        requests = (await http.get(f"{model_url}/_requests")).json()
        metrics = None if args.server == "baseline" else (
            await http.get(f"http://127.0.0.1:{server.port}/metrics")).text
    result = report(args, window_ms, received, asked, requests, answer_text, mono_minus_wall_ns,
                    busy, wall, alone, during)
    result["server"] = args.server
    result["live_node"] = args.live_node
    result["hub_stalls"] = None if metrics is None else hub_stalls(metrics)
    result["publishes_on_coach_hub"] = None if metrics is None else publishes_acked(metrics)
    return result


def publishes_acked(metrics: str) -> int:
    """Publish commands the hub acknowledged: the live device's events when it is on this hub
    (`--live-node same`), none when it has its own."""
    return int(sum(sample.value for family in text_string_to_metric_families(metrics)
                   for sample in family.samples
                   if sample.name == "fitsync_commands_total"
                   and sample.labels.get("method") == "publish"
                   and sample.labels.get("result") == "ok"))


def hub_stalls(metrics: str) -> dict[str, Any]:
    """The hub's own stalls over its whole run, from its metrics (`hub/stalls.py`): garbage
    collections by generation, and how often its 50 ms timer ran over 25 and 100 ms late. A
    p99 made by one stall shows here when the stall was the hub's; when it shows nothing, the
    stall was elsewhere (the database, the machine)."""
    gc: dict[str, dict[str, float]] = {}
    lag: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name.startswith("fitsync_gc_pause_seconds_"):
                kind = sample.name.rsplit("_", 1)[1]
                if kind in ("count", "sum"):
                    gc.setdefault(sample.labels["generation"], {})[kind] = sample.value
            elif sample.name == "fitsync_event_loop_lag_seconds_bucket":
                lag[sample.labels["le"]] = sample.value
            elif sample.name == "fitsync_event_loop_lag_seconds_count":
                lag["+Inf"] = sample.value
    total = lag.get("+Inf", 0.0)
    return {
        "gc": {generation: {"collections": int(v.get("count", 0)),
                            "ms": round(v.get("sum", 0.0) * 1000, 1)}
               for generation, v in sorted(gc.items())},
        "loop_lag_over_25ms": int(total - lag.get("0.025", total)),
        "loop_lag_over_100ms": int(total - lag.get("0.1", total)),
    }


def report(args: argparse.Namespace, window_ms: float, received: Received,
           asked: dict[str, str], requests: list[dict[str, Any]], answer_text: str,
           mono_minus_wall_ns: int, busy: dict[str, float], wall: float,
           alone: list[float], during: list[float]) -> dict[str, Any]:
    """Token latencies: each token's write time at the model server against the read time of
    the delta that carried it, for every watcher."""
    by_question = {r["body"]["messages"][-1]["content"]: r for r in requests}
    ends = []
    position = 0
    for token in tokens_of(answer_text):
        position += len(token)
        ends.append(position)
    latencies: list[float] = []
    first_tenth: list[float] = []
    """The first tenth of each answer's tokens: they stream while the round's asks are handled."""
    rest: list[float] = []
    """The other nine tenths: steady streaming."""
    to_publication: list[float] = []
    """From the model's write to the hub's publication (its clock, whole ms): no reader's delay."""
    per_answer: list[int] = []
    to_first_delta: list[float] = []
    """From sending the question to the first read of the answer's first delta."""
    crowded = 0
    closest_ms: float = float("inf")
    window_ns = window_ms * 1e6
    for reply_id, athlete in asked.items():
        seen = sorted(received.deltas.get(reply_id, []), key=lambda d: (d[0], d[2]))
        request = _request_for(by_question, athlete, reply_id, asked)
        if request is None:
            continue
        sent_ns = [t * 1e9 for t in request["token_times"]]
        published_ms = received.published_ms.get(reply_id, {})
        # One copy per watcher: group by index, each index read `watchers` times.
        offsets: dict[int, int] = {}
        chars = 0
        for index, text, _ in seen:
            if index not in offsets:
                offsets[index] = chars
                chars += len(text)
        for index, text, read_ns in seen:
            start, end = offsets[index], offsets[index] + len(text)
            read_mono = read_ns + mono_minus_wall_ns
            for token_no, token_end in enumerate(ends):
                if start < token_end <= end and token_no < len(sent_ns):
                    latency = (read_mono - sent_ns[token_no]) / 1e6
                    latencies.append(latency)
                    (first_tenth if token_no < len(ends) // 10 else rest).append(latency)
                    if published_ms.get(index):
                        published_mono = published_ms[index] * 1e6 + mono_minus_wall_ns
                        to_publication.append((published_mono - sent_ns[token_no]) / 1e6)
        per_answer.append(len(offsets))
        stamps = [t for _, t in sorted(received.published_ms.get(reply_id, {}).items())]
        if all(stamps):
            closest_ms = min([closest_ms, *(b - a for a, b in itertools.pairwise(stamps))])
        first_read: dict[int, int] = {}
        for index, _, read_ns in seen:
            first_read[index] = min(read_ns, first_read.get(index, read_ns))
        if 0 in first_read and reply_id in received.asked_ns:
            to_first_delta.append((first_read[0] - received.asked_ns[reply_id]) / 1e6)
        firsts = sorted(first_read.values())
        if window_ns:
            for i in range(len(firsts)):
                j = i
                while j + 1 < len(firsts) and firsts[j + 1] - firsts[i] < window_ns:
                    j += 1
                crowded = max(crowded, j - i + 1)
    answers = len(asked)
    hub_cpu_s = busy.get("cpu_hub", 0.0) / 100 * wall
    p99 = percentile(latencies, 0.99)
    return {
        "window_ms": window_ms,
        "answers": answers,
        "watchers_per_answer": args.watchers,
        "tokens_per_answer": len(ends),
        "latency_ms": {"p50": round(percentile(latencies, 0.5), 2), "p99": round(p99, 2),
                       "max": round(max(latencies, default=float("nan")), 2),
                       "p99_beyond_window": round(p99 - window_ms, 2),
                       "first_tenth_p99": round(percentile(first_tenth, 0.99), 2),
                       "rest_p99": round(percentile(rest, 0.99), 2),
                       "to_publication_p50": round(percentile(to_publication, 0.5), 2),
                       "to_publication_p99": round(percentile(to_publication, 0.99), 2),
                       "tokens_measured": len(latencies)},
        "ask_to_first_delta_ms": {"p50": round(percentile(to_first_delta, 0.5), 2),
                                  "p99": round(percentile(to_first_delta, 0.99), 2)},
        "publications_per_answer": round(statistics.mean(per_answer), 1) if per_answer else 0,
        "most_deltas_within_one_window": crowded if window_ns else None,
        "closest_deltas_published_ms": None if closest_ms == float("inf") else closest_ms,
        "hub_cpu_ms_per_answer": round(1000 * hub_cpu_s / answers, 1),
        "hub_core_busy_percent": busy.get(f"core{SERVER_CORE}"),
        "load_core_busy_percent": busy.get(f"core{LOAD_CORE}"),
        "seconds": round(wall, 2),
        "live_ack_ms_alone": _ack_summary(alone),
        "live_ack_ms_during": _ack_summary(during),
    }


def _ack_summary(acks: list[float]) -> dict[str, Any]:
    """p50, p90 and p99: p90 shows the body of the distribution when a rare stall of the
    database's commits (seen here with nothing else running) is the p99."""
    return {"p50": round(percentile(acks, 0.5), 2), "p90": round(percentile(acks, 0.9), 2),
            "p99": round(percentile(acks, 0.99), 2), "acks": len(acks)}


async def athlete_asks(args: argparse.Namespace, connection: Connection, athlete: str,
                       delay: float, received: Received, asked: dict[str, str]) -> None:
    """One athlete: after `delay`, asks `--rounds` questions, each once the answer before has
    reached every watcher."""
    await asyncio.sleep(delay)
    for round_no in range(args.rounds):
        sent_ns = time.time_ns()
        reply = ok(await connection.command("rpc", {"method": "coach.ask", "data": {
            "text": f"bench question {athlete} round {round_no}"}}))
        reply_id = reply["rpc"]["data"]["reply_id"]
        asked[reply_id] = athlete
        received.asked_ns[reply_id] = sent_ns
        try:
            await asyncio.wait_for(received.finished_event(reply_id).wait(),
                                   args.tokens / args.rate * 4 + 30)
        except TimeoutError:
            raise RuntimeError("an answer did not finish") from None


def _request_for(by_question: dict[str, dict[str, Any]], athlete: str, reply_id: str,
                 asked: dict[str, str]) -> dict[str, Any] | None:
    """The model request of this answer: the athlete's question of the same round."""
    rounds = [r for r, a in asked.items() if a == athlete]
    round_no = rounds.index(reply_id)
    return by_question.get(f"bench question {athlete} round {round_no}")


def render(results: list[dict[str, Any]]) -> str:
    rows = [("| window | tokens/answer | deltas/answer | most per window (read) | closest deltas"
             " (published) | added p50 / p99 / max ms | p99 beyond window |"
             " p99 first tenth / rest |"
             " to publication p50 / p99 | ask to first delta p50 / p99 | hub CPU/answer |"
             " live ack p50/p90/p99 alone | during |"
             " hub stalls: gc gen 2 (ms), lag > 25 / 100 ms |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat, alone, during = r["latency_ms"], r["live_ack_ms_alone"], r["live_ack_ms_during"]
        rows.append(
            f"| {r['window_ms']:g} ms{' (baseline)' if r['server'] == 'baseline' else ''}"
            f"{' (live device on its own hub)' if r['live_node'] == 'own' else ''} | "
            f"{r['tokens_per_answer']} | "
            f"{r['publications_per_answer']} | {r['most_deltas_within_one_window'] or '-'} | "
            f"{r['closest_deltas_published_ms']} ms | "
            f"{lat['p50']} / {lat['p99']} / {lat['max']} | {lat['p99_beyond_window']} | "
            f"{lat['first_tenth_p99']} / {lat['rest_p99']} | {lat['to_publication_p50']} / "
            f"{lat['to_publication_p99']} | {r['ask_to_first_delta_ms']['p50']} / "
            f"{r['ask_to_first_delta_ms']['p99']} ms | {r['hub_cpu_ms_per_answer']} ms | "
            f"{alone['p50']} / {alone['p90']} / {alone['p99']} ms | "
            f"{during['p50']} / {during['p90']} / {during['p99']} ms | "
            f"{_stalls_cell(r['hub_stalls'])} |")
    return "\n".join(rows)


def _stalls_cell(stalls: dict[str, Any] | None) -> str:
    if stalls is None:
        return "-"
    full = stalls["gc"].get("2", {"collections": 0, "ms": 0.0})
    return (f"{full['collections']} ({full['ms']}), {stalls['loop_lag_over_25ms']} / "
            f"{stalls['loop_lag_over_100ms']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=50, help="concurrent answers")
    parser.add_argument("--watchers", type=int, default=3, help="subscribers per answer")
    parser.add_argument("--rate", type=float, default=200.0, help="tokens/s of each answer")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="questions per athlete")
    parser.add_argument("--ask-spread", type=float, default=0.0,
                        help="each athlete's first question comes at a random moment within "
                        "this many seconds (0: all at once; later ones follow each answer)")
    parser.add_argument("--windows", default="10,0",
                        help="coalescing windows in ms, comma-separated (0: none)")
    parser.add_argument("--quiet-seconds", type=float, default=5.0,
                        help="live session alone before the coach load")
    parser.add_argument("--live-rate", type=float, default=50.0,
                        help="set events per second of the live session's device")
    parser.add_argument("--quiet-wait-seconds", type=float, default=20.0,
                        help="wait up to this long for idle cores first")
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server: the hub stores "
                        "into a fresh database there (default: SQLite in a temporary directory)")
    parser.add_argument("--server", choices=("hub", "baseline"), default="hub",
                        help="baseline: bench/coach_baseline_server.py, the same traffic on "
                        "plain websockets with the hub's model reader and nothing else")
    parser.add_argument("--live-node", choices=("same", "own"), default="same",
                        help="own: the live device on a second hub process of its own, on the "
                        "same core and database server")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for window in (float(w) for w in args.windows.split(",")):
        await wait_quiet(args.quiet_wait_seconds)
        results.append(await bench_window(args, window))
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_process()
    results = uvloop.run(run_all(args))
    print(render(results))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"args": vars(args), "results": results}, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
