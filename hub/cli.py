"""`fitsync-hub`: serve the hub, mint development tokens."""

from __future__ import annotations

import logging
import os
from typing import Annotated, Optional

import typer

from hub import auth
from hub.config import Settings

cli = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="FitSync Hub: realtime backend for live workouts and the AI coach.")


@cli.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Listen address [HUB_HOST]")] = None,
    port: Annotated[Optional[int], typer.Option(help="Listen port [HUB_PORT, PORT]")] = None,
    database_url: Annotated[Optional[str], typer.Option(help="[HUB_DATABASE_URL]")] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="[HUB_REDIS_URL]")] = None,
) -> None:
    """Run the hub. Flags override the environment."""
    from hub.app import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env(host=host, port=port, database_url=database_url,
                                 redis_url=redis_url)
    if settings.dev_mode:
        _print_dev_banner(settings)
    run(settings)


def _print_dev_banner(settings: Settings) -> None:
    assert settings.jwt_secret is not None
    token = auth.mint(settings.jwt_secret, "athlete-1", "athlete", ttl=24 * 3600)
    base = f"http://{settings.host}:{settings.port}"
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
    device: Annotated[Optional[str], typer.Option(help="Device id, for role device")] = None,
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


def main() -> None:
    cli()
