"""`fitsync-hub`: serve the hub, mint development tokens, drive simulated wearables."""

from __future__ import annotations

import logging
import os
from typing import Annotated
from urllib.parse import urlsplit

import typer

from hub import __version__, auth, logs
from hub.config import Settings
from simulator.cli import simulate

cli = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="FitSync Hub: realtime backend for live workouts and the AI coach.")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address [HUB_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [HUB_PORT, PORT]")] = None,
    database_url: Annotated[str | None, typer.Option(help="[HUB_DATABASE_URL]")] = None,
    redis_url: Annotated[str | None, typer.Option(help="[HUB_REDIS_URL]")] = None,
    workers: Annotated[int, typer.Option(
        min=1, help="Nodes to run in as many processes sharing the port, one per core "
                    "(they meet through Redis: HUB_REDIS_URL is required)")] = 1,
) -> None:
    """Run the hub. Flags override the environment."""
    settings = Settings.from_env(host=host, port=port, database_url=database_url,
                                 redis_url=redis_url)
    if workers > 1 and not settings.redis_url:
        typer.echo(f"--workers {workers} runs {workers} nodes, which share channels through "
                   "Redis: set HUB_REDIS_URL (or --redis-url), e.g. redis://127.0.0.1:6379/0",
                   err=True)
        raise typer.Exit(2)
    logs.configure(settings.log_format, sentry_dsn=os.environ.get("SENTRY_DSN") or None)
    from hub.app import serve as run  # after logging is set up: its imports log

    log = logging.getLogger("hub")
    log.info("FitSync Hub %s on %s:%d: database %s, broker %s%s", __version__, settings.host,
             settings.port, _database_of(settings), _broker_of(settings),
             f", {workers} workers" if workers > 1 else "")
    if settings.dev_mode:
        _print_dev_banner(settings, log)
    run(settings, workers)


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


cli.command()(simulate)


def main() -> None:
    cli()
