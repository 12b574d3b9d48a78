"""`fitsync-hub simulate`: simulated wearables (and watching trainers) against a running hub.

Two ways to get identities:
- `--demo`: only the hub's URL is needed. The hub's dev-only endpoints (development mode or
  `HUB_DEV_LOGIN=1`) set up the demo trainer (the one the web app's "demo trainer" button
  signs in as) linked to the demo's athletes, and mint every token. Athletes follow a
  plausible workout (`simulator.workout`) until stopped (Ctrl-C), so the trainer view has
  something to show within seconds.
- otherwise: tokens are minted with the hub's secret (`--secret` / `HUB_JWT_SECRET`) for fresh
  athlete ids, and `--trainers` are linked through the HTTP API (`--api-key` / `HUB_API_KEY`).

`--trainers N` adds N trainer connections watching the athletes' sessions (each athlete's
session is watched by one of them; in the demo by all), so the display also shows what the
fan-out delivers and how late. The progress display (rich) shows events sent, acknowledged,
failed, retries and latency over the last seconds.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console

from hub import auth
from simulator.device import ReplyError
from simulator.fleet import Fleet, TokenSource, device_ids
from simulator.hub_http import HubHttp, HubHttpError
from simulator.progress import Progress
from simulator.watcher import Watcher, WatchReport
from simulator.workout import Workout

SIMULATOR_TOKEN_TTL = 24 * 3600
"""Long enough for any simulation: the simulator does not refresh tokens."""
DEMO_ATHLETES = 4
DEMO_RATE = 1.0
DEFAULT_RATE = 2.0
DEFAULT_EVENTS = 20


@dataclass
class Plan:
    """What to run, from the command line."""

    url: str
    athletes: int
    devices_per_athlete: int
    events: int | None
    duration: float | None
    rate: float
    hr_share: float
    trainers: int
    demo: bool
    end: bool
    secret: str | None
    api_key: str | None
    progress: bool


@dataclass
class Identities:
    """Who the simulation acts as: device tokens, the athletes (None: fresh ids), and the
    trainers with the athletes each watches."""

    device_token: TokenSource
    athletes: list[str] | None
    trainer_token: Callable[[str], str]
    watching: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Outcome:
    summary: dict[str, Any]
    ended: list[dict[str, Any]]
    watchers: list[WatchReport] = field(default_factory=list)
    stopped_by_signal: bool = False


def simulate(
    url: Annotated[str, typer.Option(help="The hub's WebSocket endpoint")] = (
        "ws://127.0.0.1:8000/connection/websocket"),
    demo: Annotated[bool, typer.Option(
        "--demo",
        help="Demo users and tokens from the hub's dev login; runs until Ctrl-C")] = False,
    athletes: Annotated[int | None, typer.Option(
        min=1, help=f"Athletes, one live session each [default: 1; {DEMO_ATHLETES} with --demo]",
        show_default=False)] = None,
    devices_per_athlete: Annotated[int, typer.Option(
        min=1, help="Devices per athlete, all publishing into the athlete's session")] = 1,
    events: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help=f"Events each device publishes [default: {DEFAULT_EVENTS}, unless --duration or "
             "--demo]")] = None,
    duration: Annotated[float | None, typer.Option(
        min=0, show_default=False, help="Seconds to run (with --events: whichever ends first)")
    ] = None,
    rate: Annotated[float | None, typer.Option(
        min=0, show_default=False,
        help=f"Events/s per device; 0: as fast as acknowledgements allow [default: {DEFAULT_RATE};"
             f" {DEMO_RATE} with --demo]")] = None,
    hr_share: Annotated[float, typer.Option(
        min=0, max=1, help="Fraction of events that are heart-rate batches (not with --demo)")
    ] = 0.2,
    trainers: Annotated[int, typer.Option(
        min=0, help="Trainer connections watching the athletes' sessions")] = 0,
    end: Annotated[bool, typer.Option(
        "--end/--keep-open", help="End the sessions afterwards (watchers see the summary)")] = True,
    secret: Annotated[str | None, typer.Option(
        envvar="HUB_JWT_SECRET", show_default=False,
        help="HS256 secret the hub runs with, to mint tokens (not with --demo) [HUB_JWT_SECRET]")
    ] = None,
    api_key: Annotated[str | None, typer.Option(
        envvar="HUB_API_KEY", show_default=False,
        help="The hub's API key, to link --trainers to athletes (not with --demo) [HUB_API_KEY]")
    ] = None,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", show_default=False,
        help="Live progress display [default: when the output is a terminal]")] = None,
) -> None:
    """Run simulated wearables against a hub, then print acks/s and ack latency.

    Each device connects with its own device token, publishes its events in a closed loop
    (the next one after the previous one's acknowledgement) and retries the same event id on
    temporary errors. Ctrl-C stops the devices, ends the sessions and prints the summary.
    Exits 1 when some event was not acknowledged.
    """
    import uvloop
    from websockets.exceptions import WebSocketException

    plan = Plan(
        url=url, athletes=athletes or (DEMO_ATHLETES if demo else 1),
        devices_per_athlete=devices_per_athlete,
        events=events if events is not None or duration is not None or demo else DEFAULT_EVENTS,
        duration=duration, rate=rate if rate is not None else DEMO_RATE if demo else DEFAULT_RATE,
        hr_share=hr_share, trainers=trainers, demo=demo, end=end, secret=secret,
        api_key=api_key, progress=progress if progress is not None else sys.stdout.isatty(),
    )
    if not demo and not secret:
        typer.echo("--secret or HUB_JWT_SECRET is needed (the secret the hub runs with), "
                   "or --demo against a hub in development mode.", err=True)
        raise typer.Exit(2)
    if not demo and trainers and not api_key:
        typer.echo("--trainers needs --api-key or HUB_API_KEY to link them (or --demo).",
                   err=True)
        raise typer.Exit(2)
    _raise_open_files_limit()
    try:
        outcome = uvloop.run(run(plan))  # like the hub: the default loop would slow the load
    except HubHttpError as exc:
        typer.echo(f"simulation against {url} failed: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, WebSocketException, ReplyError) as exc:
        hint = "" if demo else ", with this secret"
        typer.echo(f"simulation against {url} failed: {exc!r}; is the hub running there{hint}?",
                   err=True)
        raise typer.Exit(2) from None
    expected = None
    if plan.events is not None and plan.duration is None and not outcome.stopped_by_signal:
        expected = plan.athletes * plan.devices_per_athlete * plan.events
    _print_summary(outcome, expected)
    failed = sum(outcome.summary["failed"].values()) + len(outcome.summary["stopped"])
    if failed or (expected is not None and outcome.summary["acked"] < expected):
        raise typer.Exit(1)


async def run(plan: Plan) -> Outcome:
    stop = asyncio.Event()
    _stop_on_signals(stop)
    http = HubHttp(plan.url, plan.api_key)
    who = await _demo_identities(http, plan) if plan.demo else _minted_identities(plan)
    async with Fleet(plan.url, who.device_token, athletes=plan.athletes,
                     devices_per_athlete=plan.devices_per_athlete, hr_share=plan.hr_share,
                     title="demo workout" if plan.demo else "simulated workout",
                     athlete_ids=who.athletes,
                     events_for=(lambda device: Workout(device)) if plan.demo else None) as fleet:
        if not plan.demo and plan.trainers:
            who.watching = await _link_trainers(http, plan, fleet)
        typer.echo(f"{len(fleet.devices)} devices connected; {_sessions(fleet.sessions)}")
        if plan.demo:
            typer.echo(f"open {HubHttp(plan.url).base}/ and press \"demo trainer\" to watch; "
                       "Ctrl-C stops")
        watchers = await _open_watchers(plan.url, fleet, who)
        done = asyncio.Event()
        display = None
        if plan.progress:
            title = "FitSync demo" if plan.demo else "FitSync simulation"
            view = Progress(fleet.live_reports, [w.report for w in watchers], title)
            display = asyncio.create_task(view.show(done, Console()))
        watch_tasks = [asyncio.create_task(w.run(done)) for w in watchers]
        try:
            result = await fleet.run(count=plan.events, rate=plan.rate, seconds=plan.duration,
                                     stop=stop)
            await _drain([w.report for w in watchers])
        finally:
            done.set()
            await asyncio.gather(*watch_tasks, return_exceptions=True)
            if display is not None:
                await display
        ended = await fleet.end_sessions() if plan.end else []
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
    return Outcome(result.summary(), ended, [w.report for w in watchers], stop.is_set())


async def _demo_identities(http: HubHttp, plan: Plan) -> Identities:
    """The demo's athletes and tokens from the dev endpoints; extra trainers watch everyone."""
    demo = await http.demo(plan.athletes, 1 + plan.trainers)
    athletes = [a["user_id"] for a in demo["athletes"]]
    devices = {
        (athlete, device): await http.dev_token(athlete, "device", device)
        for athlete in athletes
        for device in device_ids(athlete, plan.devices_per_athlete)
    }
    # The first trainer is the web app's "demo trainer": the person at the browser.
    watching = {trainer: athletes for trainer in demo["trainers"][1:]}
    trainers = {t: await http.dev_token(t, "trainer") for t in watching}
    return Identities(lambda athlete, device: devices[(athlete, device)], athletes,
                      trainers.__getitem__, watching)


def _minted_identities(plan: Plan) -> Identities:
    secret = plan.secret
    assert secret is not None
    issuer, audience = os.environ.get("HUB_JWT_ISSUER"), os.environ.get("HUB_JWT_AUDIENCE")

    def device_token(athlete: str, device: str) -> str:
        return auth.mint(secret, athlete, "device", device=device, ttl=SIMULATOR_TOKEN_TTL,
                         issuer=issuer, audience=audience)

    def trainer_token(trainer: str) -> str:
        return auth.mint(secret, trainer, "trainer", ttl=SIMULATOR_TOKEN_TTL, issuer=issuer,
                         audience=audience)

    return Identities(device_token, None, trainer_token)


async def _link_trainers(http: HubHttp, plan: Plan, fleet: Fleet) -> dict[str, list[str]]:
    """Athlete i is linked to trainer i mod N, through the HTTP API."""
    watching: dict[str, list[str]] = {f"sim-{fleet.run_id}-t{j}": []
                                      for j in range(plan.trainers)}
    trainers = list(watching)
    for i, athlete in enumerate(fleet.athletes):
        trainer = trainers[i % len(trainers)]
        await http.link(trainer, athlete)
        watching[trainer].append(athlete)
    return watching


async def _open_watchers(url: str, fleet: Fleet, who: Identities) -> list[Watcher]:
    session_of = dict(zip(fleet.athletes, fleet.sessions, strict=True))
    watchers = []
    for trainer, athletes in who.watching.items():
        watcher = Watcher(url, who.trainer_token(trainer), trainer)
        await watcher.connect()
        await watcher.watch([session_of[a] for a in athletes])
        watchers.append(watcher)
    return watchers


async def _drain(reports: list[WatchReport], quiet_s: float = 0.3, most_s: float = 3.0) -> None:
    """Let the watchers read what is still on its way (a publication reaches them just after
    its acknowledgement reached the device): until nothing new came for `quiet_s`."""
    if not reports:
        return
    deadline = asyncio.get_running_loop().time() + most_s
    last = -1
    while asyncio.get_running_loop().time() < deadline:
        received = sum(r.received for r in reports)
        if received == last:
            return
        last = received
        await asyncio.sleep(quiet_s)


def _stop_on_signals(stop: asyncio.Event) -> None:
    """The first Ctrl-C (or SIGTERM) stops the devices gracefully; a second one interrupts."""
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        if stop.is_set():
            loop.remove_signal_handler(sig)
            os.kill(os.getpid(), sig)
            return
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, handle, sig)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass


def _raise_open_files_limit() -> None:
    """One socket per device: hundreds of devices outgrow a default soft limit of 1024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _sessions(ids: list[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"sessions {', '.join(ids[:shown])}{more}"


def _print_summary(outcome: Outcome, expected: int | None) -> None:
    summary = outcome.summary
    latency = summary["latency_ms"]
    of = f"/{expected}" if expected is not None else ""
    typer.echo(f"acked {summary['acked']}{of} events in {summary['seconds']} s: "
               f"{summary['acks_per_s']} acks/s")
    if latency:
        typer.echo(f"ack latency p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
                   f"max {latency['max']} ms")
    typer.echo(f"retries {summary['retries']}, reconnects {summary['reconnects']}, "
               f"failed by code {summary['failed'] or 'none'}")
    for stopped in summary["stopped"]:
        typer.echo(f"  stopped early: {stopped}")
    if outcome.watchers:
        received = sum(w.received for w in outcome.watchers)
        typer.echo(f"{len(outcome.watchers)} trainers received {received} publications")
    if outcome.ended:
        ended = outcome.ended
        volume = round(sum(s["volume_kg"] for s in ended), 1)
        typer.echo(f"ended {len(ended)} sessions: {sum(s['sets'] for s in ended)} sets, "
                   f"{sum(s['reps'] for s in ended)} reps, {volume} kg lifted")
