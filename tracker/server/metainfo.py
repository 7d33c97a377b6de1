"""Transfer metadata: agents publish a layer's segments (torrents); the fleet reads them."""

from __future__ import annotations

import re

from aiohttp import web

from core.trackererrors import InvalidRequest
from core.wire import AGENT_ID_HEADER, SegmentMeta, check_digest
from tracker.server import (
    TRACKER,
    agent_credentials,
    read_json,
    reply,
    require_token,
)


async def put_segment(request: web.Request) -> web.Response:
    """``PUT /v1/metainfo/{digest}/{index}``; the agent names itself in X-Layerswarm-Agent-Id."""
    agent_id, key = agent_credentials(request, request.headers.get(AGENT_ID_HEADER, ""))
    digest = check_digest(request.match_info["digest"])
    raw_index = request.match_info["index"]
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not re.fullmatch(r"[0-9]{1,6}", raw_index):
        raise InvalidRequest("segment index must be a small non-negative integer")
    body = await read_json(request)
    total = body.get("total_size")
    if not isinstance(total, int) or isinstance(total, bool):
        raise InvalidRequest("field 'total_size' must be an integer")
    segment = SegmentMeta.from_json(body, index=int(raw_index))
    meta = await request.app[TRACKER].put_metainfo(agent_id, key, digest, total, segment)
    return reply({"digest": digest, "total_size": meta.total_size, "complete": meta.complete})


async def get_metainfo(request: web.Request) -> web.Response:
    require_token(request)
    meta = await request.app[TRACKER].get_metainfo(request.match_info["digest"])
    return reply(meta.to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/metainfo/{digest}/{index}", put_segment)
    app.router.add_get("/v1/metainfo/{digest}", get_metainfo)
