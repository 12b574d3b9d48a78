"""`fitsync-hub`: serve the hub, mint development tokens, drive simulated wearables."""

from __future__ import annotations

import logging
import os
import resource
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from hub import __version__, auth, logs
from hub.config import Settings

cli = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="FitSync Hub: realtime backend for live workouts and the AI coach.")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [HUB_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [HUB_PORT, PORT]")] = None,
    database_url: Annotated[str | None, typer.Option(help="[HUB_DATABASE_URL]")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[HUB_REDIS_URL]")] = None,
) -> None:
    """Run the hub. Flags override the environment."""
    settings = Settings.from_env(host=host, port=port, database_url=database_url,
                                 redis_url=redis_url)
    logs.configure(settings.log_format, sentry_dsn=os.environ.get("SENTRY_DSN") or None)
    from hub.app import serve as run  # after logging is set up: its imports log

    log = logging.getLogger("hub")
    log.info("FitSync Hub %s on %s:%d: database %s, broker %s", __version__, settings.host,
             settings.port, _database_of(settings), _broker_of(settings))
    if settings.dev_mode:
        _print_dev_banner(settings, log)
    run(settings)


def _database_of(settings: Settings) -> str:
    """Where the data lives, without the password."""
    from sqlalchemy.engine import make_url

    from models.db import normalize_url

    url = make_url(normalize_url(settings.database_url))
    if url.get_backend_name() == "sqlite":
        return f"SQLite {url.database}"
    return f"PostgreSQL {url.host}:{url.port or 5432}/{url.database}"


def _broker_of(settings: Settings) -> str:
    if not settings.redis_url:
        return "in-process (one node)"
    hosts = [urlsplit(url.strip()).hostname or "?" for url in settings.redis_url.split(",")]
    return f"Redis at {', '.join(hosts)}"


def _print_dev_banner(settings: Settings, log: logging.Logger) -> None:
    assert settings.jwt_secret is not None
    token = auth.mint(settings.jwt_secret, "athlete-1", "athlete", ttl=24 * 3600)
    base = f"http://{settings.host}:{settings.port}"
    if settings.log_format == "json":  # one record, so every line stays one JSON object
        log.warning("development mode (HUB_JWT_SECRET not set): a generated secret and a token "
                    "for athlete-1 valid 24 h", extra={"jwt_secret": settings.jwt_secret,
                                                       "token": token, "url": f"{base}/"})
        return
    typer.echo(
        "\nFitSync Hub in development mode (HUB_JWT_SECRET not set).\n"
        f"  JWT secret (HS256): {settings.jwt_secret}\n"
        f"  token for user athlete-1, valid 24 h:\n    {token}\n"
        f"  open {base}/ in a browser; WebSocket: ws://{settings.host}:{settings.port}"
        "/connection/websocket\n"
        "  set HUB_JWT_SECRET to keep tokens valid across restarts.\n"
    )


@cli.command()
def token(
    sub: Annotated[str, typer.Option(help="User id (the athlete a device acts for)")],
    role: Annotated[str, typer.Option(help="athlete, trainer, device or admin")] = "athlete",
    device: Annotated[str | None, typer.Option(help="Device id, for role device")] = None,
    ttl: Annotated[int, typer.Option(help="Seconds until the token expires")] = 3600,
) -> None:
    """Mint an HS256 token with HUB_JWT_SECRET."""
    secret = os.environ.get("HUB_JWT_SECRET")
    if not secret:
        typer.echo("HUB_JWT_SECRET is not set: export the secret the hub runs with.", err=True)
        raise typer.Exit(2)
    if role not in auth.ROLES:
        typer.echo(f"--role must be one of {', '.join(auth.ROLES)}", err=True)
        raise typer.Exit(2)
    if role == "device" and not device:
        typer.echo("--device is required with --role device", err=True)
        raise typer.Exit(2)
    typer.echo(auth.mint(secret, sub, role, device=device, ttl=ttl,
                         issuer=os.environ.get("HUB_JWT_ISSUER"),
                         audience=os.environ.get("HUB_JWT_AUDIENCE")))


SIMULATOR_TOKEN_TTL = 24 * 3600
"""Long enough for any simulation: the simulator does not refresh tokens."""


@cli.command()
def simulate(
    url: Annotated[str, typer.Option(help="The hub's WebSocket endpoint")] = (
        "ws://127.0.0.1:8000/connection/websocket"),
    athletes: Annotated[int, typer.Option(min=1, help="Athletes, one live session each")] = 1,
    devices_per_athlete: Annotated[int, typer.Option(
        min=1, help="Devices per athlete, all publishing into the athlete's session")] = 1,
    events: Annotated[int, typer.Option(min=1, help="Events each device publishes")] = 20,
    rate: Annotated[float, typer.Option(
        min=0, help="Events/s per device; 0: as fast as acknowledgements allow")] = 2.0,
    hr_share: Annotated[float, typer.Option(
        min=0, max=1, help="Fraction of events that are heart-rate batches, the rest sets")] = 0.2,
    end: Annotated[bool, typer.Option(
        "--end/--keep-open", help="End the sessions afterwards (watchers see the summary)")] = True,
    secret: Annotated[str | None, typer.Option(
        envvar="HUB_JWT_SECRET", show_default=False,
        help="HS256 secret the hub runs with, to mint device tokens [HUB_JWT_SECRET]")] = None,
) -> None:
    """Run simulated wearables against a hub, then print acks/s and ack latency.

    Each device connects with its own device token, publishes its events in a closed loop
    (the next one after the previous one's acknowledgement) and retries the same event id on
    temporary errors. Exits 1 when some event was not acknowledged.
    """
    import uvloop
    from websockets.exceptions import WebSocketException

    from simulator import Fleet, ReplyError

    if not secret:
        typer.echo("--secret or HUB_JWT_SECRET is needed: the secret the hub runs with.", err=True)
        raise typer.Exit(2)
    issuer, audience = os.environ.get("HUB_JWT_ISSUER"), os.environ.get("HUB_JWT_AUDIENCE")

    def device_token(athlete: str, device: str) -> str:
        return auth.mint(secret, athlete, "device", device=device, ttl=SIMULATOR_TOKEN_TTL,
                         issuer=issuer, audience=audience)

    async def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with Fleet(url, device_token, athletes=athletes,
                         devices_per_athlete=devices_per_athlete, hr_share=hr_share) as fleet:
            typer.echo(f"{len(fleet.devices)} devices connected; {_sessions(fleet.sessions)}")
            result = await fleet.run(count=events, rate=rate)
            return result.summary(), await fleet.end_sessions() if end else []

    _raise_open_files_limit()
    try:
        summary, ended = uvloop.run(run())  # like the hub: the default loop would slow the load
    except (OSError, WebSocketException, ReplyError) as exc:
        typer.echo(f"simulation against {url} failed: {exc!r}; is the hub running there, "
                   "with this secret?", err=True)
        raise typer.Exit(2) from None
    expected = athletes * devices_per_athlete * events
    _print_summary(summary, expected)
    _print_ended(ended)
    if summary["acked"] < expected:
        raise typer.Exit(1)


def _raise_open_files_limit() -> None:
    """One socket per device: hundreds of devices outgrow a default soft limit of 1024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _sessions(ids: list[str], shown: int = 5) -> str:
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"sessions {', '.join(ids[:shown])}{more}"


def _print_summary(summary: dict[str, Any], expected: int) -> None:
    latency = summary["latency_ms"]
    typer.echo(f"acked {summary['acked']}/{expected} events in {summary['seconds']} s: "
               f"{summary['acks_per_s']} acks/s")
    if latency:
        typer.echo(f"ack latency p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
                   f"max {latency['max']} ms")
    typer.echo(f"retries {summary['retries']}, reconnects {summary['reconnects']}, "
               f"failed by code {summary['failed'] or 'none'}")
    for stopped in summary["stopped"]:
        typer.echo(f"  stopped early: {stopped}")


def _print_ended(summaries: list[dict[str, Any]]) -> None:
    if summaries:
        volume = round(sum(s["volume_kg"] for s in summaries), 1)
        typer.echo(f"ended {len(summaries)} sessions: {sum(s['sets'] for s in summaries)} sets, "
                   f"{sum(s['reps'] for s in summaries)} reps, {volume} kg lifted")


def main() -> None:
    cli()
