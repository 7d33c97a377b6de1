"""A fault-injecting HTTP proxy in front of the real registry.

It is a fault injector, not a registry: every request is forwarded to the real
``docker-registry`` behind it, and only the faults a real registry cannot produce on demand
are added, each for a counted number of requests: answering 429/503 with ``Retry-After``,
resetting the connection after some body bytes, sending blob bodies slowly, or stating a
Docker Hub style rate limit (``ratelimit-*`` headers on manifests). Everything it
did is recorded in ``events`` so a test can assert the fault really happened.

It runs its own event loop in a thread, so sync tests (driving subprocesses) and async tests
(driving an in-process agent) use it alike; it listens on 127.0.0.1 only.

    with FaultProxy(registry.url) as proxy:
        proxy.fail_blobs(2, status=503, retry_after=1)
        proxy.reset_blobs(1, after_bytes=1 << 20)
        ... point the agent's upstream at proxy.url ...
        assert proxy.count("reset") == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

_BLOB_RE = re.compile(r"^/v2/.+/blobs/[a-z0-9]+:[0-9a-f]+$")
_MANIFEST_RE = re.compile(r"^/v2/.+/manifests/[^/]+$")
# Response headers a registry client needs; hop-by-hop ones are the proxy's own business.
_PASSED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Docker-Content-Digest",
    "Docker-Distribution-API-Version",
    "WWW-Authenticate",
    "ETag",
    "Accept-Ranges",
    "Location",
)
_FORWARDED_REQUEST_HEADERS = ("Authorization", "Accept", "Range", "User-Agent")


@dataclass(frozen=True)
class Event:
    """One request as the proxy handled it: ``fault`` is "", "status", "reset" or "slow"."""

    method: str
    path: str
    range: str
    status: int
    fault: str
    at: float


class FaultProxy:
    def __init__(self, upstream_url: str, *, chunk: int = 64 << 10) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.events: list[Event] = []
        self._chunk = chunk
        self._lock = threading.Lock()
        self._fail: list[tuple[int, str | None]] = []
        self._fail_manifests: list[tuple[int, str | None]] = []
        self._resets: list[int] = []
        self._rate: float | None = None
        self._rate_limit: tuple[int, int] | None = None
        self._blob_bodies = 0
        self.max_blob_bodies = 0  # the most blob bodies it was sending at the same time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # -- faults (each applies to the next blob GETs, in order) ----------------------------

    def fail_blobs(self, times: int, *, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next ``times`` blob GETs with ``status`` (and ``Retry-After``)."""
        with self._lock:
            self._fail += [(status, retry_after)] * times

    def fail_manifests(
        self, times: int, *, status: int = 503, retry_after: str | None = None
    ) -> None:
        """Answer the next ``times`` manifest requests (GET or HEAD) with ``status``."""
        with self._lock:
            self._fail_manifests += [(status, retry_after)] * times

    def manifest_requests(self) -> list[Event]:
        with self._lock:
            return [e for e in self.events if _MANIFEST_RE.match(e.path)]

    def reset_blobs(self, times: int, *, after_bytes: int) -> None:
        """Cut the connection of the next ``times`` blob GETs after ``after_bytes`` body bytes
        (0: before the status line)."""
        with self._lock:
            self._resets += [after_bytes] * times

    def throttle(self, bytes_per_second: float | None) -> None:
        """Send blob bodies at about this rate (None: full speed)."""
        with self._lock:
            self._rate = bytes_per_second

    def state_rate_limit(self, remaining: int, limit: int = 100) -> None:
        """Answer manifest requests with Docker Hub's ``ratelimit-limit``/``-remaining``."""
        with self._lock:
            self._rate_limit = (remaining, limit)

    def count(self, fault: str, *, method: str = "GET") -> int:
        with self._lock:
            return sum(1 for e in self.events if e.fault == fault and e.method == method)

    def blob_requests(self) -> list[Event]:
        with self._lock:
            return [e for e in self.events if _BLOB_RE.match(e.path)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("fault proxy did not start in 30s")
        if failure:
            raise RuntimeError("fault proxy failed to start") from failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- the proxy ------------------------------------------------------------------------

    def _record(self, request: web.Request, status: int, fault: str) -> None:
        with self._lock:
            self.events.append(
                Event(
                    request.method,
                    request.path,
                    request.headers.get("Range", ""),
                    status,
                    fault,
                    time.monotonic(),
                )
            )

    def _take_faults(
        self, is_blob: bool, is_manifest: bool
    ) -> tuple[tuple[int, str | None] | None, int | None, float | None]:
        """The next injected failure (status, Retry-After) or reset point for this request,
        and the rate to send a blob at."""
        fail: tuple[int, str | None] | None = None
        reset: int | None = None
        with self._lock:
            rate = self._rate if is_blob else None
            if is_manifest and self._fail_manifests:
                fail = self._fail_manifests.pop(0)
            elif is_blob and self._fail:
                fail = self._fail.pop(0)
            elif is_blob and self._resets:
                reset = self._resets.pop(0)
        return fail, reset, rate

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        is_blob = request.method == "GET" and _BLOB_RE.match(request.path) is not None
        is_manifest = _MANIFEST_RE.match(request.path) is not None
        fail, reset, rate = self._take_faults(is_blob, is_manifest)
        if fail is not None:
            status, retry_after = fail
            self._record(request, status, "status")
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"injected by fault proxy"}]}'
            return web.Response(
                status=status, body=body, headers=headers, content_type="application/json"
            )
        if reset == 0:
            # Dropped before any answer: the client sees the server disconnect.
            self._record(request, 0, "reset")
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        assert self._session is not None
        headers = {
            h: request.headers[h] for h in _FORWARDED_REQUEST_HEADERS if h in request.headers
        }
        async with self._session.request(
            request.method,
            self.upstream_url + request.path_qs,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=300),
        ) as up:
            out = web.StreamResponse(status=up.status)
            for h in _PASSED_HEADERS:
                if h in up.headers:
                    out.headers[h] = up.headers[h]
            with self._lock:
                rate_limit = self._rate_limit
            if rate_limit is not None and "/manifests/" in request.path:
                out.headers["ratelimit-remaining"] = f"{rate_limit[0]};w=21600"
                out.headers["ratelimit-limit"] = f"{rate_limit[1]};w=21600"
            fault = "reset" if reset is not None else ("slow" if rate else "")
            self._record(request, up.status, fault)
            await out.prepare(request)
            if request.method == "HEAD":
                return out
            with self._lock:
                if is_blob:
                    self._blob_bodies += 1
                    self.max_blob_bodies = max(self.max_blob_bodies, self._blob_bodies)
            try:
                # The agent may hang up (it gave up on a slow body): not a proxy fault.
                with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
                    await self._relay_body(request, up, out, reset, rate)
            finally:
                with self._lock:
                    if is_blob:
                        self._blob_bodies -= 1
            return out

    async def _relay_body(
        self,
        request: web.Request,
        up: aiohttp.ClientResponse,
        out: web.StreamResponse,
        reset: int | None,
        rate: float | None,
    ) -> None:
        sent = 0
        started = time.monotonic()
        async for chunk in up.content.iter_chunked(self._chunk):
            if reset is not None and sent + len(chunk) >= reset:
                await out.write(chunk[: max(0, reset - sent)])
                await out.drain()
                if request.transport is not None:
                    request.transport.abort()
                return
            await out.write(chunk)
            sent += len(chunk)
            if rate:
                # Pace the body: never ahead of rate * elapsed.
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await out.write_eof()
