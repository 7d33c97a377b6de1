"""What operators look at: the fleet as JSON and as a page, Prometheus metrics, health."""

from __future__ import annotations

import html
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tracker.errors import Unauthorized
from tracker.server import METRICS, TRACKER, reply, require_token

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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_page(fleet: dict[str, Any]) -> str:
    totals = fleet["totals"]
    agents = fleet["agents"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>layerswarm tracker</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin-bottom:2em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
        "th{background:#eee}</style></head><body><h1>layerswarm fleet</h1>",
        f"<p>{len(agents)} live agents; from peers {_size(totals['peer_bytes'])}, "
        f"from upstream {_size(totals['upstream_bytes'])}; savings "
        f"{100 * fleet['savings_ratio']:.1f}%</p>",
        "<h2>Regions</h2>",
        _table(
            ["region", "from upstream", "from peers", "savings"],
            [
                [
                    r["region"] or "(none)",
                    _size(r["upstream_bytes"]),
                    _size(r["peer_bytes"]),
                    f"{100 * r['savings_ratio']:.1f}%",
                ]
                for r in fleet["regions"]
            ],
        ),
        "<h2>Zones</h2>",
        _table(
            ["region", "zone", "agents"],
            [[z["region"], z["zone"], z["agents"]] for z in fleet["zones"]],
        ),
        "<h2>Hottest layers</h2>",
        _table(
            ["digest", "lookups", "holders", "fetching"],
            [[h["digest"], h["lookups"], h["holders"], h["fetchers"]] for h in fleet["hottest"]],
        ),
        "<h2>Agents</h2>",
        _table(
            [
                "agent",
                "address",
                "region",
                "zone",
                "role",
                "load",
                "from peers",
                "from upstream",
                "uploaded",
            ],
            [
                [
                    a["agent_id"],
                    f"{a['address']}:{a['peer_port']}",
                    a["region"],
                    a["zone"],
                    a["role"],
                    a["load"],
                    _size(a["counters"]["peer_bytes"]),
                    _size(a["counters"]["upstream_bytes"]),
                    _size(a["counters"]["uploaded_bytes"]),
                ]
                for a in agents[:1000]
            ],
        ),
        "</body></html>",
    ]
    return "".join(parts)


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
