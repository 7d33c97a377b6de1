"""Load shedding: past ``max_inflight`` requests in this process, API requests get 429 at once.

A request answered late is worse than one refused early. The agent's client gives up after
its timeout and the work done for it is wasted; and an agent whose tracker calls fail goes to
the upstream instead, so a tracker that queues without bound under a rollout's burst turns it
into an upstream stampede. A 429 costs this process almost nothing, and its Retry-After,
which agents honour with jitter, spreads the retries over the next seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from tracker.server import reply

# Whole seconds (the header's unit); agents wait 0.5-1.5 times this before asking again.
RETRY_AFTER_SECONDS = 1


@dataclass
class Shedder:
    """Requests of this process in progress; ``limit`` 0 means never shed."""

    limit: int
    inflight: int = 0


SHEDDER = web.AppKey("shedder", Shedder)


@web.middleware
async def shedding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    shedder = request.app[SHEDDER]
    # Only the API: health checks and scrapes must answer whatever the load.
    if not request.path.startswith("/v1/") or shedder.limit <= 0:
        return await handler(request)
    if shedder.inflight >= shedder.limit:
        return reply(
            {"error": "tracker busy, retry later", "code": "busy"},
            status=429,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    shedder.inflight += 1
    try:
        return await handler(request)
    finally:
        shedder.inflight -= 1
