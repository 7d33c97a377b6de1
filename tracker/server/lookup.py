"""Peer lookups with cold-fetch coordination, and reports of peers that served bad data."""

from __future__ import annotations

from aiohttp import web

from core.trackererrors import InvalidRequest
from core.wire import check_agent_id, check_digest
from tracker.server import METRICS, TRACKER, agent_credentials, field_str, read_json, reply
from tracker.service import MAX_NAMED


async def lookup(request: web.Request) -> web.Response:
    agent_id, key = agent_credentials(request)
    body = await read_json(request)
    digest = check_digest(field_str(body, "digest"))
    wanted = body.get("agents", [])
    if not isinstance(wanted, list) or len(wanted) > MAX_NAMED:
        raise InvalidRequest(f"agents must be a list of at most {MAX_NAMED} agent ids")
    named = [check_agent_id(a) if isinstance(a, str) else check_agent_id("") for a in wanted]
    assign = body.get("assign", False)
    if not isinstance(assign, bool):
        raise InvalidRequest("assign must be true or false")
    result = await request.app[TRACKER].lookup(agent_id, key, digest, named, assign=assign)
    request.app[METRICS].lookup_done(result.action)
    if assign and result.action != "fetch":
        outcome = "assigned" if result.parent is not None else "none"
        request.app[METRICS].parent_choices.labels(outcome).inc()
    return reply(result.to_json())


async def bad_peer(request: web.Request) -> web.Response:
    agent_id, key = agent_credentials(request)
    body = await read_json(request)
    digest = check_digest(field_str(body, "digest"))
    peer_id = field_str(body, "peer_id")
    await request.app[TRACKER].report_bad_peer(agent_id, key, peer_id, digest)
    request.app[METRICS].bad_peer_reports.inc()
    return reply({"reported": peer_id})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/agents/{id}/lookup", lookup)
    app.router.add_post("/v1/agents/{id}/bad-peer", bad_peer)
