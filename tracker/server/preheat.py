"""Preheat: operators create jobs, agents poll for theirs and report per-layer progress."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from core.trackererrors import InvalidRequest
from core.wire import LayerProgress
from tracker.server import (
    METRICS,
    TRACKER,
    agent_credentials,
    field_str,
    read_json,
    reply,
    require_token,
)


def _optional_str(body: Any, name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"field {name!r} must be a string")
    return value


async def create(request: web.Request) -> web.Response:
    require_token(request)
    body = await read_json(request)
    scope = body.get("scope", "seeds")
    if not isinstance(scope, str):
        raise InvalidRequest("field 'scope' must be seeds or all")
    job_id = await request.app[TRACKER].create_preheat(
        field_str(body, "image"),
        scope,
        _optional_str(body, "zone"),
        _optional_str(body, "region"),
    )
    request.app[METRICS].preheat_jobs.labels("api").inc()
    return reply({"id": job_id}, status=201)


async def status(request: web.Request) -> web.Response:
    require_token(request)
    return reply(await request.app[TRACKER].preheat_status(request.match_info["job"]))


async def tasks(request: web.Request) -> web.Response:
    agent_id, key = agent_credentials(request)
    jobs = await request.app[TRACKER].agent_tasks(agent_id, key)
    return reply({"jobs": [j.to_json() for j in jobs]})


async def report(request: web.Request) -> web.Response:
    agent_id, key = agent_credentials(request)
    body = await read_json(request)
    raw_layers = body.get("layers", [])
    if not isinstance(raw_layers, list):
        raise InvalidRequest("field 'layers' must be a list")
    layers = [LayerProgress.from_json(x) for x in raw_layers]
    await request.app[TRACKER].report_preheat(
        agent_id,
        key,
        request.match_info["job"],
        layers,
        field_str(body, "state"),
        error=_optional_str(body, "error"),
    )
    return reply({"reported": request.match_info["job"]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/preheat", create)
    app.router.add_get("/preheat/{job}", status)
    app.router.add_get("/v1/agents/{id}/tasks", tasks)
    app.router.add_post("/v1/agents/{id}/preheat/{job}", report)
