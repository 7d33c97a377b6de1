"""A fleet member gone bad on the relay transport, run inside a host namespace: it holds the
fleet token, registers with the tracker, announces a layer as held and answers every request
for it with garbage of the right length.

    python -m tests.fleet.evil_relay HOST PORT TRACKER_URL TOKEN_FILE DIGEST SIZE

A fault injector: a real agent never serves bytes it could not verify. It writes the number
of garbage bytes it sent to stdout when stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp import web

from core.trackerclient import HttpTrackerClient
from core.wire import AgentInfo, Announcement


async def main(argv: list[str]) -> None:
    host, port, tracker, token_file, digest, size_raw = argv
    size = int(size_raw)
    sent = 0

    async def blob(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Length": str(size)})
        await resp.prepare(request)
        left = size
        while left:
            n = min(left, 256 << 10)
            await resp.write(b"\xee" * n)
            sent += n
            left -= n
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/blobs/{digest}", blob)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port)).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession() as session:
        client = HttpTrackerClient(
            tracker,
            Path(token_file).read_text().strip(),
            "evil-agent",
            secrets.token_urlsafe(24),
            session,
        )
        info = AgentInfo("evil-agent", host, int(port), zone="z1", region="r1")
        await client.heartbeat(info)
        await client.announce_many([Announcement(digest, "holding", size, size)])
        print("ready", flush=True)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            await client.heartbeat(info)
    await runner.cleanup()
    print(f"bytes_sent={sent}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
