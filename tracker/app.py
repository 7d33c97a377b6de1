"""The tracker's composition root: every dependency is built (or injected) here, nowhere else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics

from core.tasks import Supervisor
from core.trackererrors import StoreUnavailable
from tracker.clock import Clock, SystemClock
from tracker.config import TrackerConfig
from tracker.metrics import TrackerMetrics
from tracker.server import (
    AGENT_CERTS,
    METRICS,
    TOKEN,
    TRACKER,
    agents,
    fleet,
    invalidations,
    lookup,
    metainfo,
    preheat,
    webhooks,
)
from tracker.server.errors import errors_middleware, metrics_middleware
from tracker.server.shedding import SHEDDER, Shedder, shedding_middleware
from tracker.service import Tracker
from tracker.store import TrackerStore, open_store

log = logging.getLogger(__name__)


def build_app(
    config: TrackerConfig,
    *,
    store: TrackerStore | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The tracker as an aiohttp application.

    Reads the fleet token from ``config.token_file`` (ConfigError when missing). A store passed
    in stays the caller's to close; one built from ``config.store`` is closed with the app.
    """
    token = config.read_token()
    owned = store is None
    the_store = (
        store if store is not None else open_store(config.store, timeout=config.request_timeout)
    )
    tracker = Tracker(the_store, clock or SystemClock(), config)
    # A counter's `_created` series is a timestamp that reads like a count
    # (layerswarm_tracker_preheat_jobs_created); no one needs it.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    reg = registry if registry is not None else CollectorRegistry()

    app = web.Application(
        client_max_size=config.max_body,
        # Shed requests are counted (status 429) but cost no store round trip.
        middlewares=[metrics_middleware, shedding_middleware, errors_middleware],
    )
    app[SHEDDER] = Shedder(config.max_inflight)
    app[TRACKER] = tracker
    app[METRICS] = TrackerMetrics(reg)
    app[TOKEN] = token
    app[AGENT_CERTS] = config.agent_ca_file is not None
    app[fleet.REGISTRY] = reg
    for module in (agents, lookup, metainfo, preheat, webhooks, invalidations, fleet):
        module.add_routes(app)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        tasks = Supervisor("tracker")
        try:
            try:
                await the_store.ping()
            except StoreUnavailable as exc:
                # Serve anyway: /healthz reports it, and requests succeed once the store is back.
                log.warning("store not reachable at start-up: %s", exc)
            tasks.spawn(tracker.maintain(), name="tracker-prune")
            log.info("tracker ready store=%s", "memory" if config.store == "memory" else "redis")
            yield
        finally:
            await tasks.close()
            if owned:
                await the_store.close()

    app.cleanup_ctx.append(lifecycle)
    return app
