"""The agent's address as each runtime wants it written."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from layerswarm.runtimeconf.files import ConfigureError

DEFAULT_MIRROR = "http://127.0.0.1:5050"


@dataclass(frozen=True)
class MirrorAddress:
    scheme: str
    host: str
    port: int | None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:5050``: Docker's registry-mirrors, containerd's host key."""
        return f"{self.scheme}://{self.netloc}"

    @property
    def netloc(self) -> str:
        """``127.0.0.1:5050``: containers-registries.conf's location, Docker's insecure list."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def plain_http(self) -> bool:
        return self.scheme == "http"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(raw: str) -> MirrorAddress:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigureError(f"--mirror must be http(s)://HOST[:PORT], got {raw!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigureError(f"--mirror takes no path, query or user: {raw!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigureError(f"--mirror has a bad port: {raw!r}") from None
    return MirrorAddress(parts.scheme, parts.hostname.lower(), port)
