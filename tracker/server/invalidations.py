"""``POST /v1/invalidations`` (operators: forget a tag fleet-wide) and ``GET`` (agents poll)."""

from __future__ import annotations

from aiohttp import web

from core.trackererrors import InvalidRequest
from tracker.server import TRACKER, field_str, read_json, reply, require_token


async def create(request: web.Request) -> web.Response:
    require_token(request)
    body = await read_json(request)
    inv = await request.app[TRACKER].invalidate(field_str(body, "image"))
    return reply(inv.to_json(), status=201)


async def since(request: web.Request) -> web.Response:
    require_token(request)
    raw = request.query.get("after", "0")
    try:
        after = float(raw)
    except ValueError:
        raise InvalidRequest("after must be a number (the created time last seen)") from None
    items = await request.app[TRACKER].invalidations(after)
    return reply({"invalidations": [i.to_json() for i in items]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/invalidations", create)
    app.router.add_get("/v1/invalidations", since)
