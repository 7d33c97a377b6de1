"""What operators look at: the fleet as JSON and as a page, Prometheus metrics, health."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.trackererrors import Unauthorized
from tracker.server import METRICS, TRACKER, reply, require_token
from tracker.server.page import render_page

REGISTRY = web.AppKey("registry", CollectorRegistry)


async def fleet_json(request: web.Request) -> web.Response:
    # Agent addresses and counters are for the fleet's operators, not for anyone who can
    # reach the tracker; /metrics (aggregates only, no addresses) stays open for scrapers.
    require_token(request)
    return reply(await request.app[TRACKER].fleet())


async def metrics(request: web.Request) -> web.Response:
    totals, roles, regions = await request.app[TRACKER].fleet_summary()
    request.app[METRICS].fleet.update(totals, roles, regions)
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    await request.app[TRACKER].store.ping()
    return reply({"status": "ok"})


async def page(request: web.Request) -> web.Response:
    try:
        require_token(request, allow_basic=True)
    except Unauthorized:
        return web.Response(
            status=401,
            text="fleet token required (any user name, the token as password)",
            headers={"WWW-Authenticate": 'Basic realm="layerswarm tracker"'},
        )
    fleet = await request.app[TRACKER].fleet()
    return web.Response(text=render_page(fleet), content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", page)
    app.router.add_get("/v1/fleet", fleet_json)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
