"""``layerswarm tracker``: serve the tracker's HTTP API until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from aiohttp import web

from layerswarm import settings
from tracker.app import build_app
from tracker.config import TrackerConfig

log = logging.getLogger(__name__)

HELP = "run the tracker: which agents hold which layers, and who fetches a cold one"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, TrackerConfig)


def run(args: argparse.Namespace) -> int:
    config = settings.load(TrackerConfig, args)
    # Build (and so validate token file and store URL) before any socket is opened.
    app = build_app(config)
    asyncio.run(serve(app, config))
    return 0


async def serve(app: web.Application, config: TrackerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and drain for shutdown_timeout."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=config.shutdown_timeout, access_log=None)
    await runner.setup()
    try:
        host, port = config.listen_host_port
        site = web.TCPSite(runner, host, port)
        await site.start()
        for addr in runner.addresses:
            log.info("tracker listening on http://%s:%s", addr[0], addr[1])
        await stop.wait()
        log.info("stopping: draining requests for up to %.0fs", config.shutdown_timeout)
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
