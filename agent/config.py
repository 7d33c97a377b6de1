"""The agent's settings: one frozen dataclass, filled by core.settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from core.serve import shutdown_timeout_setting
from core.settings import (
    ConfigError,
    parse_duration,
    parse_hostport,
    parse_size,
    parse_url_list,
    setting,
)

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"

# A registry host as clients name it: a DNS name or IPv4/[IPv6] address, optional port.
_REGISTRY_NAME = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$"
)


def valid_registry_name(name: str) -> bool:
    return len(name) <= 255 and bool(_REGISTRY_NAME.match(name))


def mirror_prefix(registry: str) -> str:
    """The path component naming ``registry`` in a podman/CRI-O mirror location
    (``node:5050/ghcr.io``); a reference path may not hold a colon, so a port is ``_port``."""
    return registry.replace(":", "_")


def canonical_registry(name: str) -> str:
    """Docker Hub's other host names, as some clients send them, mean ``docker.io``."""
    return DOCKER_HUB if name in ("index.docker.io", "registry-1.docker.io") else name


def registry_from_prefix(component: str) -> str:
    """Undo ``mirror_prefix`` (a component without ``_port`` is returned as it is)."""
    host, sep, port = component.rpartition("_")
    return f"{host}:{port}" if sep and port.isdigit() else component


@dataclass(frozen=True)
class Upstream:
    """A registry this agent mirrors: ``name`` as clients write it, ``url`` where to reach it."""

    name: str
    url: str


def parse_upstream(raw: str) -> Upstream:
    name, sep, url = raw.partition("=")
    name = name.strip()
    url = url.strip().rstrip("/")
    if not sep and "://" in name:
        host = urlsplit(name).netloc or "HOST"
        raise ConfigError(
            f"upstream {name!r} is a URL; give it as NAME=URL, the name images use first: "
            f"--upstream {host}={name.rstrip('/')}"
        )
    if not sep:
        # `--upstream ghcr.io` alone means "the registry at https://ghcr.io".
        url = DOCKER_HUB_URL if name == DOCKER_HUB else f"https://{name}"
    if not valid_registry_name(name):
        raise ConfigError(f"upstream name {name!r} is not a registry host[:port]")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"upstream {name}: URL must be http(s)://host[:port], got {url!r}")
    return Upstream(name=name, url=url)


def _parse_role(raw: str) -> str:
    if raw not in ("peer", "seed"):
        raise ConfigError(f"role must be peer or seed, got {raw!r}")
    return raw


def _parse_transport(raw: str) -> str:
    if raw not in ("relay", "torrent"):
        raise ConfigError(f"peer-transport must be relay or torrent, got {raw!r}")
    return raw


def _parse_parent_choice(raw: str) -> str:
    if raw not in ("tracker", "walk"):
        raise ConfigError(f"parent-choice must be tracker or walk, got {raw!r}")
    return raw


def _parse_fanout(raw: str) -> str:
    if raw not in ("depth", "upload"):
        raise ConfigError(f"peer-fanout must be depth or upload, got {raw!r}")
    return raw


def _parse_hostport_str(raw: str) -> str:
    parse_hostport(raw)
    return raw


@dataclass(frozen=True)
class AgentConfig:
    listen: str = field(
        default="127.0.0.1:5050",
        metadata=setting(
            "HOST:PORT the registry mirror serves on",
            parse=_parse_hostport_str,
            metavar="HOST:PORT",
        ),
    )
    data_dir: Path = field(
        default=Path("/var/lib/layerswarm"),
        metadata=setting("directory for the blob cache and state", parse=Path, metavar="DIR"),
    )
    upstream: tuple[Upstream, ...] = field(
        default=(),
        metadata=setting(
            "a mirrored registry, NAME=URL (NAME as clients name it, e.g. docker.io, ghcr.io, "
            "127.0.0.1:5000); docker.io is always mirrored unless overridden",
            parse=parse_upstream,
            repeatable=True,
            metavar="NAME=URL",
        ),
    )
    default_upstream: str = field(
        default=DOCKER_HUB,
        metadata=setting(
            "the upstream for requests without ?ns= (Docker's registry-mirrors sends none)",
            metavar="NAME",
        ),
    )
    cache_size: int = field(
        default=20 << 30,
        metadata=setting(
            "bytes of blobs to keep before evicting least recently used ones",
            parse=parse_size,
            metavar="SIZE",
        ),
    )
    disk_reserve: int = field(
        default=1 << 30,
        metadata=setting(
            "bytes the data dir's filesystem keeps free: the cache evicts to keep them, and a "
            "blob that would eat into them is refused (503) instead of filling the disk",
            parse=parse_size,
            metavar="SIZE",
        ),
    )
    credentials_file: Path | None = field(
        default=None,
        metadata=setting(
            "YAML mapping NAME: {username, password} of upstream credentials, used when a "
            "client sends none (read at start-up, never logged or sent elsewhere)",
            parse=Path,
            metavar="FILE",
        ),
    )
    auth_ttl: float = field(
        default=60.0,
        metadata=setting(
            "how long an upstream's yes to 'may this client read this repo' is trusted",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    auth_grace: float = field(
        default=86400.0,
        metadata=setting(
            "while the upstream is unreachable, honour an earlier yes this old",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    revalidate_tags: tuple[str, ...] = field(
        default=(),
        metadata=setting(
            "tags always checked with the upstream, whatever tag-ttl says (served from the "
            "cache only when the upstream fails): a glob on the tag (latest, *-snapshot) or "
            "on REPO:TAG (library/*:latest)",
            repeatable=True,
            metavar="PATTERN",
        ),
    )
    tag_ttl: float = field(
        default=30.0,
        metadata=setting(
            "how long a tag's digest is served before asking the upstream again",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    connect_timeout: float = field(
        default=10.0,
        metadata=setting("upstream connect timeout", parse=parse_duration, metavar="DURATION"),
    )
    read_timeout: float = field(
        default=60.0,
        metadata=setting(
            "upstream read timeout (between bytes)", parse=parse_duration, metavar="DURATION"
        ),
    )
    upstream_retry_wait: float = field(
        default=30.0,
        metadata=setting(
            "longest an upstream's 429/503 (its Retry-After honoured) or connection resets are "
            "waited out for one blob before the client gets the error",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    max_manifest_size: int = field(
        default=4 << 20,
        metadata=setting(
            "largest manifest accepted from an upstream", parse=parse_size, metavar="SIZE"
        ),
    )
    # Peer-to-peer settings; without --tracker the agent runs an embedded tracker.
    tracker: str = field(
        default="",
        metadata=setting(
            "tracker URL(s), comma-separated replicas; empty runs an embedded tracker",
            parse=parse_url_list,
            metavar="URL[,URL...]",
        ),
    )
    tracker_token_file: Path | None = field(
        default=None,
        metadata=setting(
            "file holding the fleet's shared tracker token", parse=Path, metavar="FILE"
        ),
    )
    serve_tracker: bool = field(
        default=False,
        metadata=setting(
            "serve the embedded tracker's API on --tracker-listen, so a small fleet needs no "
            "tracker process: other agents run with --tracker http://THIS-NODE:PORT and the "
            "same --tracker-token-file (required here: the fleet token)"
        ),
    )
    tracker_listen: str = field(
        default="0.0.0.0:7070",
        metadata=setting(
            "HOST:PORT the embedded tracker serves on with --serve-tracker",
            parse=_parse_hostport_str,
            metavar="HOST:PORT",
        ),
    )
    tracker_ca_file: Path | None = field(
        default=None,
        metadata=setting(
            "CA (PEM) that signed an https tracker's certificate (default: --peer-ca-file if "
            "set, else the system's); with --peer-cert-file the agent shows its certificate "
            "and its agent id is that certificate's name",
            parse=Path,
            metavar="FILE",
        ),
    )
    zone: str = field(default="", metadata=setting("this node's zone label", metavar="ZONE"))
    region: str = field(default="", metadata=setting("this node's region label", metavar="REGION"))
    role: str = field(
        default="peer",
        metadata=setting(
            "peer, or seed for a regional cache node", parse=_parse_role, metavar="ROLE"
        ),
    )
    peer_listen: str = field(
        default="0.0.0.0:0",
        metadata=setting(
            "HOST:PORT for peer transfers (port 0 picks a free one)",
            parse=_parse_hostport_str,
            metavar="HOST:PORT",
        ),
    )
    advertise_address: str = field(
        default="",
        metadata=setting(
            "address peers dial to reach this agent (default: the peer-listen host)", metavar="HOST"
        ),
    )
    peer_wait: float = field(
        default=10.0,
        metadata=setting(
            "how long to wait for peers before fetching from upstream directly",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    upload_rate: int = field(
        default=0,
        metadata=setting(
            "peer upload limit in bytes/s, 0 for none", parse=parse_size, metavar="SIZE"
        ),
    )
    download_rate: int = field(
        default=0,
        metadata=setting(
            "peer download limit in bytes/s, 0 for none", parse=parse_size, metavar="SIZE"
        ),
    )
    max_connections: int = field(
        default=200,
        metadata=setting("peer connection cap", metavar="N"),
    )
    segment_size: int = field(
        default=16 << 20,
        metadata=setting(
            "bytes per peer-transfer segment; the same across the fleet, 1M..256M in whole MiB",
            parse=parse_size,
            metavar="SIZE",
        ),
    )
    peer_ca_file: Path | None = field(
        default=None,
        metadata=setting(
            "fleet CA (PEM); with peer-cert-file and peer-key-file, swarms are fleet-only TLS",
            parse=Path,
            metavar="FILE",
        ),
    )
    peer_cert_file: Path | None = field(
        default=None,
        metadata=setting(
            "this agent's certificate (PEM), signed by the fleet CA", parse=Path, metavar="FILE"
        ),
    )
    peer_key_file: Path | None = field(
        default=None,
        metadata=setting("this agent's private key (PEM) for peer TLS", parse=Path, metavar="FILE"),
    )
    peer_transport: str = field(
        default="relay",
        metadata=setting(
            "relay: stream each blob from one parent and pass it on as it arrives (chains "
            "scheduled through the tracker); torrent: libtorrent swarms of fixed segments",
            parse=_parse_transport,
            metavar="relay|torrent",
        ),
    )
    peer_children: int = field(
        default=1,
        metadata=setting(
            "relay: agents one agent streams a blob to at once; 1 makes chains, each link at "
            "full speed",
            metavar="N",
        ),
    )
    peer_fanout: str = field(
        default="depth",
        metadata=setting(
            "relay: when a parent takes more than --peer-children children of one blob. "
            "upload: while its upload has room (one stream per layer it is downloading, "
            "shared across layers; measured no faster yet); depth: one more per 8 levels "
            "of chain depth",
            parse=_parse_fanout,
            metavar="depth|upload",
        ),
    )
    parent_choice: str = field(
        default="tracker",
        metadata=setting(
            "relay: who picks a follower's parent. tracker: the tracker hands each newcomer "
            "a free slot of the layer's tree (a chain's end), so simultaneous newcomers line "
            "up at once; walk: the follower asks the peers it was given and walks down busy "
            "parents' children to a free one",
            parse=_parse_parent_choice,
            metavar="tracker|walk",
        ),
    )
    p2p: bool = field(
        default=True,
        metadata=setting("fetch from and seed to peers (off: a plain pull-through mirror)"),
    )
    # Long enough for a layer being streamed to a client to finish.
    shutdown_timeout: float = shutdown_timeout_setting(30.0)

    def __post_init__(self) -> None:
        names = [u.name for u in self.upstream]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"upstream {sorted(dupes)[0]} given more than once")
        if not valid_registry_name(self.default_upstream):
            raise ConfigError(f"default-upstream {self.default_upstream!r} is not a registry name")
        if self.default_upstream not in self.upstreams:
            raise ConfigError(
                f"default-upstream {self.default_upstream} has no --upstream "
                f"{self.default_upstream}=URL"
            )
        if self.cache_size < 1 << 20:
            raise ConfigError("cache-size must be at least 1M")
        if self.disk_reserve < 0:
            raise ConfigError("disk-reserve must not be negative")
        for name in (
            "auth_ttl",
            "auth_grace",
            "tag_ttl",
            "connect_timeout",
            "read_timeout",
            "peer_wait",
            "upstream_retry_wait",
            "shutdown_timeout",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.replace('_', '-')} must not be negative")
        if self.max_connections < 1:
            raise ConfigError("max-connections must be at least 1")
        if not 1 <= self.peer_children <= 64:
            raise ConfigError("peer-children must be between 1 and 64")
        mib = 1 << 20
        if not (mib <= self.segment_size <= 256 * mib) or self.segment_size % mib:
            raise ConfigError("segment-size must be a whole number of MiB between 1M and 256M")
        self._check_served_tracker()
        tls = (self.peer_ca_file, self.peer_cert_file, self.peer_key_file)
        if any(tls) and not all(tls):
            raise ConfigError("peer-ca-file, peer-cert-file and peer-key-file go together")

    def _check_served_tracker(self) -> None:
        if self.serve_tracker and self.tracker:
            raise ConfigError(
                "serve-tracker runs the fleet's tracker in this agent; drop it, or drop --tracker"
            )
        if self.serve_tracker and self.tracker_token_file is None:
            raise ConfigError(
                "serve-tracker needs --tracker-token-file: the fleet token other agents present"
            )

    @property
    def upstreams(self) -> dict[str, Upstream]:
        """Every mirrored registry by name; Docker Hub is always present unless overridden."""
        out = {DOCKER_HUB: Upstream(DOCKER_HUB, DOCKER_HUB_URL)}
        out.update({u.name: u for u in self.upstream})
        return out

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.listen)

    @property
    def peer_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.peer_listen)

    @property
    def tracker_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.tracker_listen)
