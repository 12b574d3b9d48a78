"""The server-to-server HTTP API (`Authorization: apikey <HUB_API_KEY>`) and public probes.

Bodies are plain JSON; errors are `{"error": {"code", "message"}}` with 400 (bad body or value),
401 (no or wrong key) and 404 (unknown id or channel namespace). The application adds its own
routes (users, trainer links, sessions) through `Application.routes`, behind the same key.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hub.broker.base import BrokerUnavailable
from hub.node import Node
from hub.protocol.codes import ErrorCode, ReplyError

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status)


def node_of(request: Request) -> Node:
    node: Node = request.state.node
    return node


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def require_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"`{field}` must be a non-empty string")
    return value


def with_api_key(handler: Handler) -> Handler:
    """Check the API key and turn ApiError / ReplyError into the documented error bodies."""

    async def guarded(request: Request) -> Response:
        key = node_of(request).settings.api_key
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not key:
            return error_response(401, "the HTTP API is off: set HUB_API_KEY to enable it")
        # As bytes: compare_digest refuses non-ASCII str, and any header byte may arrive
        # (Starlette decodes headers as latin-1, so this gives back the bytes sent).
        sent = given.strip().encode("latin-1")
        if scheme.lower() != "apikey" or not hmac.compare_digest(sent, key.encode()):
            return error_response(401, "send `Authorization: apikey <HUB_API_KEY>`")
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message)
        except ReplyError as exc:
            status = 404 if exc.error.code == ErrorCode.UNKNOWN_CHANNEL.code else 400
            return error_response(status, exc.error.message)
        except BrokerUnavailable:
            return error_response(503, "broker unavailable, retry later")

    return guarded


async def publish(request: Request) -> Response:
    body = await json_body(request)
    channel = require_str(body, "channel")
    if "data" not in body:
        raise ApiError(400, "`data` is required")
    position = await node_of(request).publish(channel, orjson.dumps(body["data"]))
    return JSONResponse({"offset": position.offset, "epoch": position.epoch})


async def presence(request: Request) -> Response:
    node, channel = node_of(request), request.path_params["channel"]
    rule, _ = node.rule_for(channel)
    if not rule.options.presence:
        raise ApiError(400, f"presence is not kept for {rule.namespace}: channels")
    found = await node.broker.presence(channel)
    return JSONResponse(
        {"presence": {cid: {"user": i.user, "client": i.client} for cid, i in found.items()}}
    )


async def history(request: Request) -> Response:
    node, channel = node_of(request), request.path_params["channel"]
    rule, _ = node.rule_for(channel)
    if rule.options.history is None:
        raise ApiError(400, f"history is not kept for {rule.namespace}: channels")
    try:
        limit = int(request.query_params.get("limit", "-1"))
    except ValueError:
        raise ApiError(400, "`limit` must be an integer") from None
    result = await node.history(channel, None, limit, False)
    pubs = [{"data": orjson.Fragment(p["data"]), "offset": p.get("offset", 0)}
            for p in result["publications"]]
    body = {"publications": pubs, "epoch": result["epoch"], "offset": result.get("offset", 0)}
    return Response(orjson.dumps(body), media_type="application/json")


async def disconnect(request: Request) -> Response:
    body = await json_body(request)
    await node_of(request).disconnect_user(require_str(body, "user"))
    return JSONResponse({})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """503 when a dependency is down, and from the first moment of a shutdown (hub/drain.py),
    so the load balancer sends new connections elsewhere."""
    if request.state.drain.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    node = node_of(request)
    checks: dict[str, str] = {}
    for name, probe in (("broker", node.broker.ping), ("database", node.application.ready)):
        try:
            await probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say why
            checks[name] = f"unavailable: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(node_of(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


def routes(app_routes: list[BaseRoute]) -> list[BaseRoute]:
    guarded = [
        Route("/api/publish", with_api_key(publish), methods=["POST"]),
        Route("/api/channels/{channel}/presence", with_api_key(presence), methods=["GET"]),
        Route("/api/channels/{channel}/history", with_api_key(history), methods=["GET"]),
        Route("/api/disconnect", with_api_key(disconnect), methods=["POST"]),
    ]
    for route in app_routes:
        assert isinstance(route, Route)
        guarded.append(Route(route.path, with_api_key(route.endpoint), methods=route.methods))
    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        *guarded,
    ]
