"""``layerswarm invalidate IMAGE:TAG...``: every agent forgets what these tags pointed to.

Agents cache a tag's digest for ``--tag-ttl``; after a tag was moved (a re-pushed ``latest``,
a hot fix under the same version) this makes each agent ask the upstream again on the next
pull of it, within one heartbeat of the tracker recording the invalidation. Agents that are
down apply it when they are back. For tags that move all the time, ``--revalidate-tags`` on
the agents is the standing version of this.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from core import settings
from layerswarm.trackerapi import TrackerAccess, TrackerAPIError, TrackerRefused


@dataclass(frozen=True)
class InvalidateConfig(TrackerAccess):
    pass


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE:TAG", help="tags to invalidate")
    settings.add_arguments(parser, InvalidateConfig)


def run(args: argparse.Namespace) -> int:
    config = settings.load(InvalidateConfig, args)
    api = config.client()
    for image in args.images:
        try:
            api.invalidate(image)
        except TrackerRefused as exc:
            print(f"layerswarm invalidate: {image}: {exc}", file=sys.stderr)
            return 2 if exc.status in (400, 401) else 1
        except TrackerAPIError as exc:
            print(f"layerswarm invalidate: {exc}", file=sys.stderr)
            return 1
        print(f"{image}: invalidated; every agent revalidates it within one heartbeat")
    return 0
