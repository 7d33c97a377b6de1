"""Where each runtime keeps its mirror configuration; overridable for tests and odd hosts."""

from __future__ import annotations

import argparse
from pathlib import Path

from layerswarm.runtimeconf import containerd, docker, podman


def add_path_arguments(parser: argparse.ArgumentParser) -> None:
    """--daemon-json, --certs-dir and --registries-conf, shared by configure and doctor."""
    parser.add_argument(
        "--daemon-json",
        type=Path,
        default=Path(docker.DEFAULT_DAEMON_JSON),
        metavar="PATH",
        help=f"docker's config (default: {docker.DEFAULT_DAEMON_JSON})",
    )
    parser.add_argument(
        "--certs-dir",
        type=Path,
        default=Path(containerd.DEFAULT_CERTS_DIR),
        metavar="PATH",
        help=f"containerd's hosts directory (default: {containerd.DEFAULT_CERTS_DIR})",
    )
    parser.add_argument(
        "--registries-conf",
        type=Path,
        default=Path(podman.DEFAULT_REGISTRIES_CONF),
        metavar="PATH",
        help=f"containers-registries.conf drop-in (default: {podman.DEFAULT_REGISTRIES_CONF})",
    )
