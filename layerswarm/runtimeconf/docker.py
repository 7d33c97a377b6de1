"""Docker: ``registry-mirrors`` in /etc/docker/daemon.json (applies to Docker Hub only)."""

from __future__ import annotations

from typing import Any

from layerswarm.runtimeconf.address import MirrorAddress
from layerswarm.runtimeconf.files import ConfigureError

DEFAULT_DAEMON_JSON = "/etc/docker/daemon.json"


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def desired_daemon_json(current: dict[str, Any], mirror: MirrorAddress) -> dict[str, Any]:
    """``current`` with our mirror first in ``registry-mirrors``, every other key kept.

    Our mirror goes first because dockerd tries mirrors in order; the operator's other
    mirrors stay behind it as fallbacks, and a second run changes nothing.
    """
    mirrors = current.get("registry-mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise ConfigureError("daemon.json: registry-mirrors is not a list of URLs")
    out = dict(current)
    out["registry-mirrors"] = [mirror.url, *(m for m in mirrors if not _same_url(m, mirror.url))]
    if mirror.plain_http and not mirror.loopback:
        # dockerd treats 127.0.0.0/8 as insecure already; any other plain-HTTP mirror must be
        # listed or dockerd refuses to talk to it.
        insecure = current.get("insecure-registries", [])
        if not isinstance(insecure, list):
            raise ConfigureError("daemon.json: insecure-registries is not a list")
        if mirror.netloc not in insecure:
            out["insecure-registries"] = [*insecure, mirror.netloc]
    return out
