"""Fault injectors, not registries: small HTTP hosts on loopback that play the parts a real
registry cannot play on demand (a storage back-end a redirect leads to, a hostile host that
asks for credentials) and record every request they get, so a test can prove what reached
them.

Each host binds its own loopback address (127.0.0.2, 127.0.0.3...: all of 127/8 is loopback
on Linux), so "another host" is another host name, as it would be on a network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None
    cookie: str | None


@dataclass
class FaultHost:
    """Answers every request with ``handler`` and records it; ``async with`` starts/stops it."""

    host: str
    handler: Handler
    seen: list[Seen] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def credentials_seen(self) -> list[str]:
        return [s.authorization or s.cookie or "" for s in self.seen if s.authorization or s.cookie]

    async def _record(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path_qs,
                request.headers.get("Authorization"),
                request.headers.get("Cookie"),
            )
        )
        return await self.handler(request)

    async def __aenter__(self) -> FaultHost:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def challenge(realm: str, service: str = "hostile") -> Handler:
    """A host that answers everything with a bearer challenge naming ``realm``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "fault injector"}]},
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="{service}"'},
        )

    return handle


def token_grabber() -> Handler:
    """A hostile token realm: hands out a token to whoever asks (and the host records it)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": "stolen", "expires_in": 300})

    return handle


def storage(root: Path) -> Handler:
    """An honest storage back-end: serves the files a redirect's path names under ``root``
    (distribution's redirect middleware sends ``<baseurl>/docker/registry/v2/blobs/...``)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        rel = Path(request.path.lstrip("/"))
        if ".." in rel.parts or not (root / rel).is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(root / rel)

    return handle
