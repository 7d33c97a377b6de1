"""The one place exceptions become HTTP answers: JSON ``{"error", "code"}``, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from core.trackererrors import TrackerError
from tracker.server import METRICS, reply

log = logging.getLogger(__name__)


def error_code(exc: TrackerError) -> str:
    """``UnknownAgent`` -> ``unknown_agent``: a stable name clients map back to the class."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def error_reply(status: int, message: str, code: str) -> web.Response:
    return reply({"error": message, "code": code}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TrackerError as exc:
        if exc.status >= 500:
            log.warning("request failed path=%s error=%s", request.path, exc)
        return error_reply(exc.status, str(exc), error_code(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_reply(exc.status, exc.reason, "http_error")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return error_reply(500, "internal error", "internal")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts each request once, where it ends, under its route pattern (a bounded label)."""
    started = time.perf_counter()
    resource = request.match_info.route.resource
    endpoint = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        request.app[METRICS].request_done(endpoint, status, time.perf_counter() - started)
