"""``layerswarm agent``: run the node's registry mirror."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from agent.app import build_app, prepare_data_dir
from agent.config import AgentConfig
from layerswarm import settings

HELP = "run the node agent: a registry mirror that fetches layers from peers, then upstream"

log = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, AgentConfig)


def run(args: argparse.Namespace) -> int:
    config = settings.load(AgentConfig, args)
    prepare_data_dir(config)
    host, port = config.listen_host_port
    log.info("agent listening on %s:%d, data in %s", host, port, config.data_dir)
    web.run_app(
        build_app(config),
        host=host,
        port=port,
        access_log=None,
        print=None,
        # SIGTERM: stop accepting, give running responses this long to finish, then cancel.
        shutdown_timeout=30.0,
    )
    return 0
