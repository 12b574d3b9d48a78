"""Development sign-in: endpoints that mint tokens and set up demo users, for development only.

They exist only when `Settings.dev_login_enabled` (the hub on its embedded defaults, or
`HUB_DEV_LOGIN=1`); in any other mode the routes are not mounted and answer 404 like any
unknown path. They let the web app's "demo athlete" / "demo trainer" buttons and
`fitsync-hub simulate --demo` work with nothing but the hub's URL: no secret is copied.

- `GET /dev/login` → the demo identities (the page shows its demo buttons when this answers).
- `POST /dev/token` `{"user", "role", "device"?, "ttl"?}` → `{"token", "user", "role",
  "expires_at"}`, signed with the hub's HS256 secret.
- `POST /dev/demo` `{"athletes"?, "trainers"?}` → the demo trainer(s) linked to the demo
  athlete and to `athletes` simulated clients, created or updated (idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from channels.base import Context
from hub import auth
from hub.config import Settings
from hub.http_api import ApiError, error_response, json_body
from models import queries

DEMO_TRAINER = "demo-trainer"
"""The trainer the sign-in's "demo trainer" button signs in as, and `simulate --demo` links."""
DEMO_ATHLETE = "demo-athlete"
"""The athlete of the "demo athlete" button; linked to the demo trainer."""
DEMO_TRAINER_NAME = "Dana (demo trainer)"
DEMO_ATHLETE_NAME = "Alex (demo athlete)"
CLIENT_NAMES = ("Maya", "Jonas", "Priya", "Tomás", "Lena", "Kofi", "Aiko", "Sven", "Nora", "Ravi")
MAX_DEMO_ATHLETES = 50
MAX_DEMO_TRAINERS = 10
DEFAULT_TTL = 600
"""Ten minutes: short enough that the page's token refresh (`getToken`) is exercised."""
MAX_TTL = 24 * 3600

ContextSource = Callable[[], Context]


def demo_client(index: int) -> str:
    """Simulated client `index` (from 1) of the demo."""
    return f"demo-client-{index}"


def demo_trainer(index: int) -> str:
    """Demo trainer `index` (from 0); the first is the one the sign-in button uses."""
    return DEMO_TRAINER if index == 0 else f"{DEMO_TRAINER}-{index + 1}"


def routes(settings: Settings, context: ContextSource) -> list[BaseRoute]:
    if not settings.dev_login_enabled:
        return []
    secret = settings.jwt_secret
    assert secret is not None, "Settings.from_env refuses HUB_DEV_LOGIN without a secret"

    async def identities(request: Request) -> Response:
        return JSONResponse({
            "athlete": {"user": DEMO_ATHLETE, "name": DEMO_ATHLETE_NAME, "role": "athlete"},
            "trainer": {"user": DEMO_TRAINER, "name": DEMO_TRAINER_NAME, "role": "trainer"},
        })

    async def token(request: Request) -> Response:
        try:
            body = await json_body(request)
            user, role, device, ttl = _token_request(body)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        minted = auth.mint(secret, user, role, device=device, ttl=ttl,
                           issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        return JSONResponse({"token": minted, "user": user, "role": role,
                             "expires_at": int(time.time()) + ttl})

    async def demo(request: Request) -> Response:
        try:
            body = await json_body(request) if await request.body() else {}
            athletes = _count(body, "athletes", 0, MAX_DEMO_ATHLETES)
            trainers = _count(body, "trainers", 1, MAX_DEMO_TRAINERS, low=1)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        return JSONResponse(await set_up_demo(context(), athletes, trainers))

    return [
        Route("/dev/login", identities, methods=["GET"]),
        Route("/dev/token", token, methods=["POST"]),
        Route("/dev/demo", demo, methods=["POST"]),
    ]


async def set_up_demo(ctx: Context, athletes: int, trainers: int) -> dict[str, Any]:
    """Users and links of the demo: every demo trainer watches the demo athlete and clients."""
    db = ctx.db
    clients = [(DEMO_ATHLETE, DEMO_ATHLETE_NAME)] + [
        (demo_client(i), CLIENT_NAMES[(i - 1) % len(CLIENT_NAMES)]) for i in range(1, athletes + 1)
    ]
    trainer_ids = [demo_trainer(i) for i in range(trainers)]
    for i, trainer_id in enumerate(trainer_ids):
        name = DEMO_TRAINER_NAME if i == 0 else f"Demo trainer {i + 1}"
        await queries.upsert_user(db, trainer_id, name, "trainer")
    for client_id, name in clients:
        await queries.upsert_user(db, client_id, name, "athlete")
        for trainer_id in trainer_ids:
            await queries.link(db, trainer_id, client_id)
    return {
        "trainers": trainer_ids,
        "athletes": [{"user_id": c, "name": n} for c, n in clients[1:]],
        "demo_athlete": DEMO_ATHLETE,
    }


def _token_request(body: dict[str, Any]) -> tuple[str, str, str | None, int]:
    user, role, device = body.get("user"), body.get("role", "athlete"), body.get("device")
    if not isinstance(user, str) or not 1 <= len(user) <= 128:
        raise ApiError(400, "`user` must be a string of 1 to 128 characters")
    if role not in auth.ROLES:
        raise ApiError(400, f"`role` must be one of {', '.join(auth.ROLES)}")
    if role == "device" and (not isinstance(device, str) or not device):
        raise ApiError(400, "`device` is required with role device")
    if role != "device":
        device = None
    ttl = _count(body, "ttl", DEFAULT_TTL, MAX_TTL, low=5)
    return user, role, device, ttl


def _count(body: dict[str, Any], name: str, default: int, most: int, low: int = 0) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= most:
        raise ApiError(400, f"`{name}` must be an integer from {low} to {most}")
    return value
