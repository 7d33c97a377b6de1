"""Pulling an image into this agent's cache ahead of a rollout, with progress per layer.

The agent pulls through its own mirror logic, as a client would, with the upstream's
configured credentials (or anonymously): the tracker that asked never sees a credential.
A few blobs are fetched at once (``CONCURRENCY``), as a runtime would; progress names each
blob's kind (layer or config) and where its bytes came from (cache, peer, upstream), in
manifest order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.blobstore import CachedBlob
from agent.config import Upstream
from agent.errors import NameUnknown
from agent.fetch import Download
from agent.mirror import Mirror
from agent.oci import DEFAULT_ACCEPT, Digest, parse_digest
from agent.reference import parse_image
from core.wire import LayerProgress

log = logging.getLogger(__name__)

_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


# Blobs of one image fetched at the same time (containerd and dockerd use 3 to 5).
CONCURRENCY = 4


@dataclass
class _Pull:
    """One blob of a preheat while it arrives; reports carry its snapshot, ``progress()``."""

    digest: str
    size: int
    done_bytes: int = 0
    kind: str = "layer"
    source: str = ""

    def progress(self) -> LayerProgress:
        done = min(self.done_bytes, self.size) if self.size else self.done_bytes
        return LayerProgress(self.digest, self.size, done, self.kind, self.source)


ProgressHook = Callable[[list[LayerProgress]], Awaitable[None]]


def _descriptors(
    body: bytes,
) -> tuple[list[tuple[Digest, int, str]], list[tuple[Digest, dict[str, object]]]]:
    """(blobs with their kind, child manifests with their platform) of a manifest or index."""
    doc = json.loads(body)
    blobs: list[tuple[Digest, int, str]] = []
    children: list[tuple[Digest, dict[str, object]]] = []
    if isinstance(doc.get("config"), dict):
        c = doc["config"]
        blobs.append((parse_digest(c["digest"]), int(c.get("size", 0)), "config"))
    for layer in doc.get("layers") or []:
        blobs.append((parse_digest(layer["digest"]), int(layer.get("size", 0)), "layer"))
    for m in doc.get("manifests") or []:
        children.append((parse_digest(m["digest"]), m.get("platform") or {}))
    return blobs, children


def _wanted(platform: dict[str, object], platforms: set[str] | None) -> bool:
    if platforms is None:
        return True
    name = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    return name in platforms


async def preheat_image(
    mirror: Mirror,
    upstreams: dict[str, Upstream],
    image: str,
    *,
    platforms: set[str] | None = None,
    on_progress: ProgressHook | None = None,
) -> list[LayerProgress]:
    """Fetch every manifest and blob of ``image`` into the cache; returns final progress."""
    ref = parse_image(image)
    upstream = upstreams.get(ref.registry)
    if upstream is None:
        raise NameUnknown(f"registry {ref.registry} is not mirrored by this agent")
    top = await mirror.manifest(
        upstream, ref.repo, ref.reference, DEFAULT_ACCEPT, None, internal=True
    )
    manifests = [top]
    if top.media_type in _INDEX_TYPES:
        _, children = _descriptors(top.body)
        for child, platform in children:
            if _wanted(platform, platforms):
                manifests.append(
                    await mirror.manifest(
                        upstream, ref.repo, child, DEFAULT_ACCEPT, None, internal=True
                    )
                )
    progress: dict[Digest, _Pull] = {}
    for m in manifests:
        blobs, _ = _descriptors(m.body)
        for digest, size, kind in blobs:
            progress.setdefault(digest, _Pull(str(digest), size, kind=kind))
    items = list(progress.values())
    lock = asyncio.Lock()

    async def report() -> None:
        # One report at a time, always of every blob: concurrent fetches share the list.
        if on_progress is not None:
            async with lock:
                await on_progress([i.progress() for i in items])

    slots = asyncio.Semaphore(CONCURRENCY)

    async def fetch(digest: Digest, item: _Pull) -> None:
        async with slots:
            opened = await mirror.open_blob(upstream, ref.repo, digest, None, internal=True)
            if isinstance(opened, CachedBlob):
                item.size = opened.size
                item.done_bytes = opened.size
                item.source = "cache"
            else:
                await _follow(opened, item, report)
                item.source = opened.source
        await report()

    await report()
    try:
        async with asyncio.TaskGroup() as tg:
            for digest, item in progress.items():
                tg.create_task(fetch(digest, item))
    except ExceptionGroup as group:
        # The first failure is the job's answer (the others are usually the same cause).
        raise group.exceptions[0] from None
    log.info("preheated image=%s blobs=%d bytes=%d", image, len(items), sum(i.size for i in items))
    return [i.progress() for i in items]


async def _follow(dl: Download, item: _Pull, report: Callable[[], Awaitable[None]]) -> None:
    reported = 0
    while not dl.finished:
        await dl.wait_changed()
        item.done_bytes = dl.written
        item.source = dl.source
        if dl.size:
            item.size = dl.size
        # Progress every 8 MiB is plenty for a progress bar and keeps the tracker quiet.
        if dl.written - reported >= 8 << 20:
            reported = dl.written
            await report()
    if dl.error is not None:
        raise dl.error
    item.done_bytes = dl.written
    item.size = dl.written
