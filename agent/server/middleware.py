"""The one place errors become OCI error bodies, and each request is counted and logged once."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from agent.errors import RegistryError, oci_code
from agent.metrics import AgentMetrics
from agent.server.registry import info

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: RegistryError, method: str, kind: str = "") -> web.Response:
    headers = {"Docker-Distribution-API-Version": "registry/2.0", **exc.headers}
    headers.setdefault("Content-Type", "application/json")
    body = exc.body(kind)
    if method == "HEAD":
        # A HEAD answer has no body; clients still read the status and challenge.
        return web.Response(status=exc.status, headers=headers)
    return web.Response(status=exc.status, body=body, headers=headers)


def make_middleware(metrics: AgentMetrics) -> Middleware:
    @web.middleware
    async def registry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.monotonic()
        ri = info(request)
        status = 500
        try:
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except RegistryError as exc:
                status = exc.status
                if status >= 500:
                    log.warning("%s %s: %s", request.method, request.path, exc.message)
                return error_response(exc, request.method, ri.kind)
            except web.HTTPException as exc:
                # aiohttp's own answers (404 unknown path, 413 big body) get OCI bodies too.
                status = exc.status
                err = RegistryError(exc.reason, status=exc.status)
                err.code = oci_code(exc.status, ri.kind)
                return error_response(err, request.method)
            except Exception:
                log.exception("unhandled error in %s %s", request.method, request.path)
                status = 500
                return error_response(RegistryError("internal error"), request.method)
        finally:
            seconds = time.monotonic() - t0
            if ri.kind not in ("metrics", "health", "config"):
                metrics.requests.labels(ri.kind, str(status)).inc()
                metrics.request_seconds.labels(ri.kind).observe(seconds)
                if ri.bytes:
                    metrics.count_served(ri.source, ri.upstream, ri.bytes)
                # One line per request; never headers, never credentials.
                log.info(
                    "method=%s kind=%s status=%d upstream=%s repo=%s digest=%s source=%s "
                    "bytes=%d seconds=%.4f",
                    request.method,
                    ri.kind,
                    status,
                    ri.upstream or "-",
                    ri.repo or "-",
                    ri.digest or "-",
                    ri.source or "-",
                    ri.bytes,
                    seconds,
                )

    return registry_middleware
