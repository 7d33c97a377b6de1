"""Operator endpoints: /metrics and /healthz."""

from __future__ import annotations

import shutil
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.blobstore import BlobStore
from agent.metrics import AgentMetrics
from agent.server.registry import info
from agent.tracking import TrackerState


class OpsHandlers:
    def __init__(
        self, metrics: AgentMetrics, store: BlobStore, tracker: Callable[[], TrackerState]
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._tracker = tracker

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)

    async def metrics(self, request: web.Request) -> web.Response:
        info(request).kind = "metrics"
        self._metrics.cache_bytes.set(self._store.total_bytes)
        self._metrics.cache_blobs.set(len(self._store.digests()))
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        info(request).kind = "health"
        usage = shutil.disk_usage(self._store.root)
        tracker = self._tracker()
        # Degraded, not failed, and still 200: the mirror serves without a tracker (from the
        # upstream only), so a liveness probe must not restart it for this.
        return web.json_response(
            {
                "status": "ok" if tracker.healthy else "degraded",
                "tracker": {"state": tracker.state, "reason": tracker.reason},
                "cache_bytes": self._store.total_bytes,
                "cache_limit_bytes": self._store.max_bytes,
                "disk_free_bytes": usage.free,
            }
        )
