"""``layerswarm tracker``: serve the tracker's HTTP API until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from layerswarm import serve, settings
from tracker.app import build_app
from tracker.config import TrackerConfig

log = logging.getLogger(__name__)

HELP = "run the tracker: which agents hold which layers, and who fetches a cold one"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, TrackerConfig)


def run(args: argparse.Namespace) -> int:
    config = settings.load(TrackerConfig, args)
    # The port, then the token file and store URL, all before the store is touched or any
    # "ready" is logged: a tracker that can't serve says so in one line and exits.
    sock = serve.bind(*config.listen_host_port)
    try:
        app = build_app(config)
        asyncio.run(
            serve.serve(
                app,
                sock,
                shutdown_timeout=config.shutdown_timeout,
                on_listening=lambda address: log.info("tracker listening on http://%s", address),
            )
        )
    finally:
        sock.close()
    return 0
