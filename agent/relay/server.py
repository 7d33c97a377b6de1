"""The peer port: other agents stream blobs from here, cached or still arriving.

``GET /v1/blobs/<digest>`` with ``Range: bytes=<offset>-`` and the asking agent's id in
``X-Layerswarm-Agent``. Answers:

* 200/206 with the bytes from ``offset`` on, streamed as they arrive, and this agent's
  lineage (``X-Layerswarm-Lineage``, comma-separated ids from the root of the chain);
* 404 when this agent neither holds nor is fetching the blob;
* 409 when it is fetching but has no live source yet, or the asker is its ancestor: serving
  then could make a parent wait on its own descendant;
* 503 when every child slot for the blob is taken, naming the children (ids only) in
  ``X-Layerswarm-Children``: the asker tries them next if the tracker vouched for them;
* 416 for a malformed or unsatisfiable range.

Only an agent of the fleet gets here: with fleet TLS the listener demands a certificate from
the fleet CA. Bytes of a download are read from its partial file with the last byte held back
until the whole blob verified, so a child never completes a blob this agent could not verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator

from aiohttp import web

from agent.blobstore import BlobStore, CachedBlob
from agent.errors import DigestInvalid
from agent.fetch import BlobFetcher, Download
from agent.metrics import AgentMetrics
from agent.oci import Digest, parse_digest
from agent.relay.state import RelayState
from agent.server.sendfile import SendfileResponse

log = logging.getLogger(__name__)

AGENT_HEADER = "X-Layerswarm-Agent"
LINEAGE_HEADER = "X-Layerswarm-Lineage"
SIZE_HEADER = "X-Layerswarm-Size"
CHILDREN_HEADER = "X-Layerswarm-Children"
SMALL_BLOB = 2 << 20
# The kernel doubles it: 256 KiB in flight, 50 ms at 40 Mbit/s, a link's worth at 10 Gbit/s
# and a LAN round trip of 0.2 ms.
_SEND_BUFFER = 128 << 10
_UNSENT_LOW_WATER = 32 << 10
# Writes go out in slices this size: a whole 256 KiB read handed to the transport would wait
# in the program's own buffer, the same lag one level up.
_WRITE_SLICE = 32 << 10
# Well under the asker's header timeout (agent.relay.source), or a parent merely waiting
# for its upstream's first answer would look dead to its child and be reported.
_START_WAIT = 0.5
SMALL_CHILDREN = 64
CHAIN_DEPTH = 8
_RANGE = re.compile(r"^bytes=(\d{1,18})-$")
_AGENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def parse_offset(value: str | None) -> int:
    if not value:
        return 0
    m = _RANGE.match(value)
    if m is None:
        raise web.HTTPRequestRangeNotSatisfiable(text="only 'bytes=N-' ranges are served")
    return int(m.group(1))


class Pacer:
    """One upload budget for the whole agent (``--upload-rate``): each write reserves its
    slot in time, so concurrent children share the rate instead of each getting it."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class PeerServer:
    def __init__(
        self,
        state: RelayState,
        store: BlobStore,
        fetcher: BlobFetcher,
        metrics: AgentMetrics,
        *,
        max_children: int,
        fanout: str = "depth",
        upload_rate: int = 0,
    ) -> None:
        self._state = state
        self._store = store
        self._fetcher = fetcher
        self._metrics = metrics
        self._max_children = max_children
        self._fanout = fanout
        self._pacer = Pacer(upload_rate)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 10)
        app.router.add_get("/v1/blobs/{digest}", self.blob)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Bind the peer port; raises OSError when it cannot (the agent then stops)."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, backlog=512)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        server = site._server  # aiohttp exposes no public way to the bound port
        assert server is not None
        sockets: list[socket.socket] = list(getattr(server, "sockets", []) or [])
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("peer server listening host=%s port=%d tls=%s", host, self.port, bool(ssl_context))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        try:
            digest = parse_digest(request.match_info["digest"])
        except DigestInvalid:
            raise web.HTTPBadRequest(text="not a digest") from None
        child = request.headers.get(AGENT_HEADER, "")
        if not _AGENT_ID.match(child):
            raise web.HTTPBadRequest(text=f"{AGENT_HEADER} must name the asking agent")
        offset = parse_offset(request.headers.get("Range"))
        cached = self._store.get(digest)
        if cached is not None:
            return await self._admit(request, digest, child, offset, cached)
        dl = self._fetcher.inflight(digest)
        if dl is None:
            raise web.HTTPNotFound(text="not here")
        if not dl.started.done():
            # Its source has not answered yet (no partial file exists before it does): a
            # moment's wait beats sending the child away to look for another parent.
            await asyncio.wait({dl.started}, timeout=_START_WAIT)  # never cancels it
        if not dl.started.done() or dl.started.cancelled() or dl.started.exception():
            raise web.HTTPConflict(text="no source yet")
        if dl.source != "upstream":
            feed = self._state.feeds.get(digest)
            if feed is None:
                raise web.HTTPConflict(text="no source yet")
            if child in feed.lineage:
                raise web.HTTPConflict(text="asker is an ancestor")
        return await self._admit(request, digest, child, offset, dl)

    async def _admit(
        self,
        request: web.Request,
        digest: Digest,
        child: str,
        offset: int,
        what: CachedBlob | Download,
    ) -> web.StreamResponse:
        size = what.size
        # Chains pay off when the transfer time dominates; a small blob (a config, a tiny
        # layer) goes to everyone who asks at once instead of waiting for a chain to form.
        small = size is not None and size <= SMALL_BLOB
        if small:
            busy = self._state.child_count(digest) >= SMALL_CHILDREN
        elif isinstance(what, CachedBlob):
            busy = self._state.child_count(digest) >= self._max_children
        else:
            busy = not self._free_slot(digest)
        if busy:
            # Naming the children lets the asker walk down to the free end of the chain
            # instead of waiting and asking around again.
            raise web.HTTPServiceUnavailable(
                text="no free child slot",
                headers={CHILDREN_HEADER: ",".join(self._state.children.get(digest, ()))},
            )
        if size is not None and offset > size:
            raise web.HTTPRequestRangeNotSatisfiable(text=f"offset beyond {size}")
        headers = {LINEAGE_HEADER: ",".join(self._state.lineage(digest))}
        if size is not None:
            headers[SIZE_HEADER] = str(size)
        status = 206 if offset else 200
        _small_send_buffer(request)
        self._state.add_child(digest, child, large=not small)
        log.debug("serving child=%s digest=%s offset=%d", child, digest, offset)
        try:
            if isinstance(what, CachedBlob) and self._pacer.rate <= 0:
                with self._store.pin(digest):
                    resp = SendfileResponse(
                        what.path, offset, what.size - offset, status=status, headers=headers
                    )
                    try:
                        await resp.prepare(request)
                    except ConnectionError as exc:
                        # The child left (it asked several parents at once and chose another).
                        log.debug("child %s left digest=%s: %s", child, digest, exc)
                        return resp
                self._metrics.count_peer_sent(what.size - offset)
                return resp
            with self._store.pin(digest):
                return await self._stream(request, what, offset, status, headers)
        finally:
            self._state.remove_child(digest, child)

    def _free_slot(self, digest: Digest) -> bool:
        """Whether one more child of this large blob fits this agent's upload.

        Every blob gets --peer-children children (chains: no layer can starve). Beyond that
        ("upload" fan-out) a node that downloads k large blobs at once receives each at
        about 1/k of its link, and its upload is as fast as its download: it can feed k
        streams at that rate without slowing any, however they fall across the blobs. So
        chains widen into trees as far as upload allows: shallower (a chain's tail pays
        every hop's lag) and with free slots newcomers find without walking a whole chain.
        """
        large = [
            dl.digest for dl in self._fetcher.downloads() if dl.size is None or dl.size > SMALL_BLOB
        ]
        if self._state.child_count(digest) < self._max_children:
            return True
        if self._fanout == "depth":
            # One more child per CHAIN_DEPTH levels: bounds depth, but a parent with two
            # children of a layer halves the rate of everything below it.
            depth = len(self._state.lineage(digest))
            return self._state.child_count(digest) < self._max_children + depth // CHAIN_DEPTH
        budget = self._max_children * max(1, len(large))
        return self._state.large_children() < budget

    async def _stream(
        self,
        request: web.Request,
        what: CachedBlob | Download,
        offset: int,
        status: int,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers=headers)
        if what.size is not None:
            resp.content_length = what.size - offset
        else:
            resp.enable_chunked_encoding()
        sent = 0
        chunks = _follow(what, offset) if isinstance(what, Download) else _read(what, offset)
        try:
            # Inside: a follower asks several candidates at once and hangs up on all but the
            # first to answer, often before our headers are out (a traceback per ask, before).
            await resp.prepare(request)
            async for chunk in chunks:
                view = memoryview(chunk)
                for start in range(0, len(view), _WRITE_SLICE):
                    piece = view[start : start + _WRITE_SLICE]
                    await self._pacer.take(len(piece))
                    await resp.write(piece)
                    sent += len(piece)
                    self._metrics.count_peer_sent(len(piece))
        except Exception as exc:
            # The child must see a short body, never a complete one we could not verify.
            log.info("relay to child cut digest=%s after %d bytes: %s", what.digest, sent, exc)
            if request.transport is not None:
                request.transport.abort()
            return resp
        await resp.write_eof()
        return resp


def _small_send_buffer(request: web.Request) -> None:
    """Keep what sits in this socket's send buffer (sent for the program, not yet for the
    network) to a few milliseconds of a link: every hop of a chain adds its buffer to the
    lag between the head and the tail, and the tail's lag is the rollout's last seconds.
    Measured: kernel autotuning let ~0.5 s per hop build up on 40 Mbit/s links."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
        with contextlib.suppress(OSError, AttributeError):
            # What the buffer still holds unsent is lag as well, and its size is in bytes, so
            # on slow links it is long: ss showed 150-260 KiB unsent per hop on 8 Mbit/s links
            # (0.2 s each). The socket now takes new bytes only when it is nearly drained.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, _UNSENT_LOW_WATER)


async def _read(blob: CachedBlob, offset: int) -> AsyncIterator[bytes]:
    fd = await asyncio.to_thread(os.open, blob.path, os.O_RDONLY)
    try:
        pos = offset
        while pos < blob.size:
            data = await asyncio.to_thread(os.pread, fd, min(256 << 10, blob.size - pos), pos)
            if not data:
                raise OSError(f"cached {blob.digest} is shorter than {blob.size}")
            pos += len(data)
            yield data
    finally:
        os.close(fd)


async def _follow(dl: Download, offset: int) -> AsyncIterator[bytes]:
    # A size learnt after we started (from the upstream's first answer) ends the stream too.
    end = dl.size - 1 if dl.size is not None else 1 << 62
    pos = offset
    async for chunk in dl.stream(offset, end):
        yield chunk
        pos += len(chunk)
        if dl.finished and dl.error is None and pos >= dl.written:
            return
