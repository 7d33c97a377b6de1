"""Operator endpoints: /metrics, /healthz and /v1/config (the running config, no secrets)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.blobstore import BlobStore
from agent.config import AgentConfig
from agent.metrics import AgentMetrics
from agent.server.registry import info
from agent.trackerlink import TrackerState


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` taken out: a URL given on the command line may
    carry credentials, and this endpoint answers anyone who reaches the port."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def describe_config(config: AgentConfig, agent_id: str) -> dict[str, Any]:
    """What ``GET /v1/config`` answers: the settings that decide where pulls go and whom the
    agent talks to, for ``layerswarm doctor`` to check a runtime's mirror config against.

    Built from an allow-list, so a setting added later is not shown until someone decides it
    may be: no credentials, no credentials-file contents, no tracker token (the token file's
    path alone, which doctor names when the tracker refuses it), no peer TLS key.
    """
    return {
        "agent_id": agent_id,
        "listen": config.listen,
        "upstreams": [
            {"name": up.name, "url": _without_userinfo(up.url)}
            for up in sorted(config.upstreams.values(), key=lambda u: u.name)
        ],
        "default_upstream": config.default_upstream,
        "zone": config.zone,
        "region": config.region,
        "role": config.role,
        "p2p": config.p2p,
        "peer_transport": config.peer_transport,
        "tracker": {
            # An empty list: the agent runs an embedded tracker and shares with no other node.
            "urls": [_without_userinfo(u) for u in config.tracker.split(",") if u],
            "token_file": str(config.tracker_token_file) if config.tracker_token_file else None,
        },
        "peer_tls": config.peer_ca_file is not None,
        "cache_size_bytes": config.cache_size,
    }


class OpsHandlers:
    def __init__(
        self,
        metrics: AgentMetrics,
        store: BlobStore,
        tracker: Callable[[], TrackerState],
        config: dict[str, Any],
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._tracker = tracker
        # Built once from the frozen config (describe_config): it cannot change while we run.
        self._config = config

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/v1/config", self.config)

    async def config(self, request: web.Request) -> web.Response:
        info(request).kind = "config"
        return web.json_response(self._config)

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
                "tracker": {
                    "state": tracker.state,
                    "reason": tracker.reason,
                    "registrations": tracker.registrations,
                },
                "cache_bytes": self._store.total_bytes,
                "cache_limit_bytes": self._store.max_bytes,
                "disk_free_bytes": usage.free,
            }
        )
