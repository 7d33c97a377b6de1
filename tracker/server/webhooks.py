"""Registry notifications: a manifest pushed to distribution becomes a preheat job.

Point distribution's ``notifications.endpoints`` at ``/webhooks/distribution`` with an
``Authorization: Bearer <fleet token>`` header; query parameters ``scope``, ``zone`` and
``region`` set the jobs' scope (default: seeds everywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from core.trackererrors import InvalidRequest
from tracker.server import METRICS, TRACKER, read_json, reply, require_token

log = logging.getLogger(__name__)

MAX_EVENTS = 200


def _is_manifest(media_type: str) -> bool:
    # Image manifests and indexes (Docker and OCI); layer and config blob pushes are not images.
    return "manifest" in media_type or media_type == "application/vnd.oci.image.index.v1+json"


def images_in(envelope: Mapping[str, Any]) -> list[str]:
    """The image references a notification envelope announces as pushed, in order, once each."""
    events = envelope.get("events")
    if not isinstance(events, list):
        raise InvalidRequest("field 'events' must be a list")
    if len(events) > MAX_EVENTS:
        raise InvalidRequest(f"at most {MAX_EVENTS} events per notification")
    images: list[str] = []
    for event in events:
        if not isinstance(event, dict) or event.get("action") != "push":
            continue
        target = event.get("target")
        request = event.get("request")
        if not isinstance(target, dict) or not _is_manifest(str(target.get("mediaType", ""))):
            continue
        repo = target.get("repository")
        host = request.get("host") if isinstance(request, dict) else None
        if not isinstance(repo, str) or not repo or not isinstance(host, str) or not host:
            continue
        tag, digest = target.get("tag"), target.get("digest")
        if isinstance(tag, str) and tag:
            ref = f"{host}/{repo}:{tag}"
        elif isinstance(digest, str) and digest:
            ref = f"{host}/{repo}@{digest}"
        else:
            continue
        if ref not in images:
            images.append(ref)
    return images


async def distribution(request: web.Request) -> web.Response:
    require_token(request)
    envelope = await read_json(request)
    images = images_in(envelope)
    q = request.query
    tracker = request.app[TRACKER]
    ids = await tracker.create_preheats(
        images, q.get("scope", "seeds"), q.get("zone") or None, q.get("region") or None
    )
    request.app[METRICS].preheat_jobs.labels("webhook").inc(len(ids))
    jobs = [{"id": job_id, "image": image} for job_id, image in zip(ids, images, strict=True)]
    if jobs:
        log.info("webhook created preheat jobs count=%d", len(jobs))
    return reply({"jobs": jobs})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/webhooks/distribution", distribution)
