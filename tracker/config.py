"""The tracker's settings: a frozen dataclass filled from flags, env and YAML."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from core.fleettoken import read_fleet_token
from core.serve import shutdown_timeout_setting
from core.settings import ConfigError, parse_duration, parse_hostport, parse_size, setting


def _parse_hostport_str(raw: str) -> str:
    parse_hostport(raw)
    return raw


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """``redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB`` -> sentinels, master name, db.

    ValueError says what is wrong.
    """
    rest = url.removeprefix("redis+sentinel://")
    hosts, _, path = rest.partition("/")
    name, _, db = path.partition("/")
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel address must be HOST:PORT, got {item!r}")
        sentinels.append((host.strip("[]"), int(port)))
    if not name:
        raise ValueError("name the master the sentinels watch: redis+sentinel://.../MASTER/DB")
    if db and not db.isdigit():
        raise ValueError(f"redis database must be a number, got {db!r}")
    return sentinels, name, int(db or 0)


def parse_store(raw: str) -> str:
    """``memory``, ``redis://HOST:PORT/DB`` or ``redis+sentinel://HOST:PORT,.../MASTER/DB``."""
    raw = raw.strip()
    if raw == "memory":
        return raw
    if raw.startswith("redis+sentinel://"):
        try:
            parse_sentinel_url(raw)
        except ValueError as exc:
            raise ConfigError(f"store: {exc}") from None
        return raw
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(
            "store must be memory, redis://HOST:PORT/DB or "
            f"redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB, got {raw!r}"
        )
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigError(f"store: redis database must be a number, got {db!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"store: bad port in {raw!r}") from None
    return raw


@dataclass(frozen=True)
class TrackerConfig:
    listen: str = field(
        default="127.0.0.1:7070",
        metadata=setting(
            "HOST:PORT the tracker serves on", parse=_parse_hostport_str, metavar="HOST:PORT"
        ),
    )
    store: str = field(
        default="memory",
        metadata=setting(
            "where fleet state lives: memory (one replica), redis://HOST:PORT/DB (replicas "
            "share it) or redis+sentinel://HOST:PORT,HOST:PORT/MASTER/DB (the master Redis "
            "Sentinel names, followed through failovers)",
            parse=parse_store,
            metavar="STORE",
        ),
    )
    token_file: Path | None = field(
        default=None,
        metadata=setting(
            "file holding the fleet's shared secret (required to serve HTTP)",
            parse=Path,
            metavar="FILE",
        ),
    )
    tls_cert_file: Path | None = field(
        default=None,
        metadata=setting(
            "serve HTTPS with this certificate (PEM; e.g. `layerswarm pki issue --name tracker`)",
            parse=Path,
            metavar="FILE",
        ),
    )
    tls_key_file: Path | None = field(
        default=None,
        metadata=setting("private key (PEM) of --tls-cert-file", parse=Path, metavar="FILE"),
    )
    agent_ca_file: Path | None = field(
        default=None,
        metadata=setting(
            "with HTTPS: agents must present a certificate from this CA (the fleet CA) whose "
            "name is their agent id, so one node cannot speak for another even with the token",
            parse=Path,
            metavar="FILE",
        ),
    )
    agent_ttl: float = field(
        default=30.0,
        metadata=setting(
            "an agent that has not sent a heartbeat for this long is gone",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    lease_ttl: float = field(
        default=30.0,
        metadata=setting(
            "a cold-fetch lease without a progress announce for this long passes to the next asker",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    max_peers: int = field(default=8, metadata=setting("peers handed out per lookup", metavar="N"))
    max_candidates: int = field(
        default=64,
        metadata=setting(
            "holders of a layer considered per lookup; more popular layers are sampled at "
            "random, the asker's region first",
            metavar="N",
        ),
    )
    heartbeat_rate: float = field(
        default=250.0,
        metadata=setting(
            "heartbeats per second the whole fleet should send: agents are told to send one "
            "every live agents / RATE seconds (at least agent-ttl/3, at most 60 s; the agent "
            "ttl grows to three intervals), so a large fleet does not heartbeat every 10 s "
            "(0: always agent-ttl/3)",
            metavar="RATE",
        ),
    )
    max_body: int = field(
        default=1 << 20,
        metadata=setting("largest request body accepted", parse=parse_size, metavar="SIZE"),
    )
    max_torrent: int = field(
        default=512 << 10,
        metadata=setting(
            "largest torrent accepted for one layer segment", parse=parse_size, metavar="SIZE"
        ),
    )
    max_announce: int = field(
        default=1000,
        metadata=setting("most holdings one announce request may carry", metavar="N"),
    )
    preheat_ttl: float = field(
        default=3600.0,
        metadata=setting(
            "how long a preheat job and its progress are kept",
            parse=parse_duration,
            metavar="DURATION",
        ),
    )
    request_timeout: float = field(
        default=5.0,
        metadata=setting(
            "timeout for one store operation", parse=parse_duration, metavar="DURATION"
        ),
    )
    workers: int = field(
        default=1,
        metadata=setting(
            "processes serving the listen port (SO_REUSEPORT: the kernel spreads connections "
            "over them); more than 1 needs a redis store, which they share",
            metavar="N",
        ),
    )
    # Off by default: bench.fleet_sim on 2 shared cores found it no help when the tracker's
    # own CPU is the limit (docs/benchmarks-scale.md); it is for a tracker waiting on Redis.
    max_inflight: int = field(
        default=0,
        metadata=setting(
            "API requests one process works on at once; more are answered 429 with "
            "Retry-After at once, which agents honour with jitter (0: no limit)",
            metavar="N",
        ),
    )
    shutdown_timeout: float = shutdown_timeout_setting(10.0)

    def __post_init__(self) -> None:
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
        for name in ("agent_ttl", "lease_ttl", "preheat_ttl", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive")
        if self.shutdown_timeout < 0:
            raise ConfigError("shutdown-timeout must not be negative")
        if not 1 <= self.max_peers <= 200:
            raise ConfigError("max-peers must be between 1 and 200")
        if self.max_candidates < self.max_peers:
            raise ConfigError("max-candidates must be at least max-peers")
        if self.max_body < 4096:
            raise ConfigError("max-body must be at least 4K")
        if not 1 <= self.max_announce <= 100_000:
            raise ConfigError("max-announce must be between 1 and 100000")
        if self.heartbeat_rate < 0:
            raise ConfigError("heartbeat-rate must not be negative")
        if self.max_inflight < 0:
            raise ConfigError("max-inflight must not be negative")
        if not 1 <= self.workers <= 64:
            raise ConfigError("workers must be between 1 and 64")
        if self.max_torrent < 1024:
            raise ConfigError("max-torrent must be at least 1K")

    def _check_combinations(self) -> None:
        if self.workers > 1 and self.store == "memory":
            raise ConfigError(
                "workers above 1 need --store redis://...: the memory store lives in one process"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls-cert-file and tls-key-file go together")
        if self.agent_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("agent-ca-file needs tls-cert-file and tls-key-file (HTTPS)")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain HTTP; ConfigError for unreadable files.

        Agent certificates are optional at the handshake (operators' tools and Prometheus
        connect with the token alone); agent endpoints then demand one (tracker.server).
        """
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            if self.agent_ca_file is not None:
                ctx.load_verify_locations(cafile=str(self.agent_ca_file))
                ctx.verify_mode = ssl.CERT_OPTIONAL
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tracker TLS files: {exc}") from None
        return ctx

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.listen)

    def read_token(self) -> str:
        """The fleet token, read once at start-up; a server without one would accept anybody."""
        return read_fleet_token(self.token_file, "token-file")
