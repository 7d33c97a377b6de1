"""Agent membership and holdings: heartbeat, announce, withdraw."""

from __future__ import annotations

from aiohttp import web

from core.trackererrors import InvalidRequest
from core.wire import AgentInfo, Announcement, check_digest
from tracker.server import TRACKER, agent_credentials, field_str, read_json, reply


async def heartbeat(request: web.Request) -> web.Response:
    agent_id, key = agent_credentials(request)
    body = await read_json(request)
    info = AgentInfo.from_json(body, agent_id=agent_id)
    result = await request.app[TRACKER].heartbeat(info, key)
    return reply(result.to_json())


async def announce(request: web.Request) -> web.Response:
    """One holding (``{"digest", "state", ...}``) or several (``{"holdings": [...]}``)."""
    agent_id, key = agent_credentials(request)
    body = await read_json(request)
    if "holdings" in body:
        raw = body["holdings"]
        if not isinstance(raw, list):
            raise InvalidRequest("field 'holdings' must be a list")
        items = [Announcement.from_json(x) for x in raw]
    else:
        items = [Announcement.from_json(body)]
    await request.app[TRACKER].announce_many(agent_id, key, items)
    return reply({"announced": len(items)})


async def withdraw(request: web.Request) -> web.Response:
    agent_id, key = agent_credentials(request)
    body = await read_json(request)
    digest = check_digest(field_str(body, "digest"))
    await request.app[TRACKER].withdraw(agent_id, key, digest)
    return reply({"withdrawn": digest})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/agents/{id}/heartbeat", heartbeat)
    app.router.add_post("/v1/agents/{id}/announce", announce)
    app.router.add_post("/v1/agents/{id}/withdraw", withdraw)
