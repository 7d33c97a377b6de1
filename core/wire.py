"""The wire model between agents and the tracker: what each request and reply carries.

Agents, the tracker's service and its HTTP API all speak these types; what the tracker's
stores keep beyond them is in tracker.model. ``from_json`` constructors validate untrusted
input and raise ``InvalidRequest``; ``to_json`` gives plain dicts ready for ``json.dumps``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.digest import digest_problem
from core.trackererrors import InvalidRequest

_AGENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
_HEX = re.compile(r"^[a-f0-9]+$")

Role = Literal["peer", "seed"]
HoldState = Literal["holding", "fetching"]
Action = Literal["peers", "fetch", "wait"]
ROLES: tuple[str, ...] = ("peer", "seed")
HOLD_STATES: tuple[str, ...] = ("holding", "fetching")
MAX_KEY = 256
MIN_KEY = 16
# An agent proves its id with its key in this header (and names itself in the other where the
# path does not).
AGENT_KEY_HEADER = "X-Layerswarm-Agent-Key"
AGENT_ID_HEADER = "X-Layerswarm-Agent-Id"


def check_digest(digest: str) -> str:
    problem = digest_problem(digest)
    if problem is not None:
        raise InvalidRequest(f"{problem}: expected sha256:<64 hex> or sha512:<128 hex>")
    return digest


def check_agent_id(agent_id: str) -> str:
    if not _AGENT_ID.match(agent_id):
        raise InvalidRequest("bad agent id: 1-128 of A-Z a-z 0-9 . _ : -")
    return agent_id


def check_key(key: str) -> str:
    if not MIN_KEY <= len(key) <= MAX_KEY or not key.isprintable():
        raise InvalidRequest(f"agent key must be {MIN_KEY}-{MAX_KEY} printable characters")
    return key


def _get(d: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in d or d[name] is None:
        if default is ...:
            raise InvalidRequest(f"missing field {name!r}")
        return default
    value = d[name]
    # bool is an int in Python; a JSON true is never a valid number here.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise InvalidRequest(f"field {name!r} has the wrong type")
    if not isinstance(value, kind):
        raise InvalidRequest(f"field {name!r} has the wrong type")
    return value


def _nonneg_int(d: Mapping[str, Any], name: str, default: Any = ...) -> int:
    value = _get(d, name, int, default)
    if value < 0 or value > 1 << 62:
        raise InvalidRequest(f"field {name!r} out of range")
    return int(value)


def _label(d: Mapping[str, Any], name: str) -> str:
    value = _get(d, name, str, "")
    if not _LABEL.match(value):
        raise InvalidRequest(f"field {name!r}: up to 63 of A-Z a-z 0-9 . _ -")
    return str(value)


def _obj(raw: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{what} must be a JSON object")
    return raw


COUNTER_NAMES: tuple[str, ...] = (
    "served_cache",
    "served_upstream",
    "served_peer",
    "upstream_bytes",
    "peer_bytes",
    "uploaded_bytes",
)


@dataclass(frozen=True)
class Counters:
    """Monotonic totals an agent reports since it started; the tracker keeps the latest."""

    served_cache: int = 0
    served_upstream: int = 0
    served_peer: int = 0
    upstream_bytes: int = 0
    peer_bytes: int = 0
    uploaded_bytes: int = 0

    @classmethod
    def from_json(cls, raw: Any) -> Counters:
        d = _obj(raw if raw is not None else {}, "counters")
        return cls(**{n: _nonneg_int(d, n, 0) for n in COUNTER_NAMES})

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    def __add__(self, other: Counters) -> Counters:
        return Counters(**{n: getattr(self, n) + getattr(other, n) for n in COUNTER_NAMES})


@dataclass(frozen=True)
class AgentInfo:
    """What an agent says about itself in every heartbeat."""

    agent_id: str
    address: str
    peer_port: int
    zone: str = ""
    region: str = ""
    role: Role = "peer"
    free_bytes: int = 0
    load: float = 0.0
    counters: Counters = field(default_factory=Counters)

    @classmethod
    def from_json(cls, raw: Any, agent_id: str | None = None) -> AgentInfo:
        d = _obj(raw, "agent")
        aid = check_agent_id(agent_id if agent_id is not None else _get(d, "agent_id", str))
        if agent_id is not None and d.get("agent_id", agent_id) != agent_id:
            raise InvalidRequest("agent_id in the body differs from the one in the path")
        address = _get(d, "address", str)
        if not 1 <= len(address) <= 255 or any(c.isspace() for c in address):
            raise InvalidRequest("field 'address' must be a host name or IP address")
        port = _get(d, "peer_port", int)
        if not 0 <= port <= 65535:
            raise InvalidRequest("field 'peer_port' out of range")
        role = _get(d, "role", str, "peer")
        if role not in ROLES:
            raise InvalidRequest("field 'role' must be peer or seed")
        load = float(_get(d, "load", (int, float), 0.0))
        if not 0 <= load < 1e9:
            raise InvalidRequest("field 'load' out of range")
        return cls(
            agent_id=aid,
            address=address,
            peer_port=port,
            zone=_label(d, "zone"),
            region=_label(d, "region"),
            role=role,
            free_bytes=_nonneg_int(d, "free_bytes", 0),
            load=load,
            counters=Counters.from_json(d.get("counters")),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Announcement:
    """An agent's claim about one digest, as sent in an announce request.

    ``upstream``: the agent fetches it from the upstream itself (its heartbeats send these):
    such an announce keeps the region's lease for it, and claims the lease when nobody holds
    it (a tracker that lost its state, a lease that ran out), so the region does not start a
    second upstream fetch beside this one.
    """

    digest: str
    state: HoldState
    progress_bytes: int = 0
    total_bytes: int = 0
    upstream: bool = False

    @classmethod
    def from_json(cls, raw: Any) -> Announcement:
        d = _obj(raw, "announcement")
        state = _get(d, "state", str, "holding")
        if state not in HOLD_STATES:
            raise InvalidRequest("field 'state' must be holding or fetching")
        progress = _nonneg_int(d, "progress_bytes", 0)
        total = _nonneg_int(d, "total_bytes", 0)
        if total and progress > total:
            raise InvalidRequest("progress_bytes exceeds total_bytes")
        upstream = _get(d, "upstream", bool, False)
        if upstream and state != "fetching":
            raise InvalidRequest("field 'upstream' is for a digest being fetched")
        return cls(check_digest(_get(d, "digest", str)), state, progress, total, upstream)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.upstream:
            del out["upstream"]  # what agents sent before the field existed
        return out


@dataclass(frozen=True)
class Peer:
    agent_id: str
    address: str
    port: int
    zone: str
    region: str
    role: Role
    state: HoldState
    progress_bytes: int
    total_bytes: int

    def to_json(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies and dominated lookup CPU in profiles.
        return {
            "agent_id": self.agent_id,
            "address": self.address,
            "port": self.port,
            "zone": self.zone,
            "region": self.region,
            "role": self.role,
            "state": self.state,
            "progress_bytes": self.progress_bytes,
            "total_bytes": self.total_bytes,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Peer:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SegmentMeta:
    """One piece of a layer's transfer metadata: bytes [offset, offset+length) and their torrent."""

    index: int
    offset: int
    length: int
    info_hash: str
    torrent: bytes

    @classmethod
    def from_json(cls, raw: Any, index: int | None = None) -> SegmentMeta:
        d = _obj(raw, "segment")
        idx = index if index is not None else _nonneg_int(d, "index")
        if index is not None and d.get("index", index) != index:
            raise InvalidRequest("index in the body differs from the one in the path")
        info_hash = _get(d, "info_hash", str).lower()
        if len(info_hash) not in (40, 64) or not _HEX.match(info_hash):
            raise InvalidRequest("field 'info_hash' must be 40 or 64 hex characters")
        try:
            torrent = base64.b64decode(_get(d, "torrent", str), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("field 'torrent' must be base64") from None
        return cls(idx, _nonneg_int(d, "offset"), _nonneg_int(d, "length"), info_hash, torrent)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "offset": self.offset,
            "length": self.length,
            "info_hash": self.info_hash,
            "torrent": base64.b64encode(self.torrent).decode(),
        }


@dataclass(frozen=True)
class Metainfo:
    """Everything published about a layer's transfer; ``complete`` once segments cover it all."""

    digest: str
    total_size: int
    segments: tuple[SegmentMeta, ...]

    @property
    def complete(self) -> bool:
        end = 0
        for seg in sorted(self.segments, key=lambda s: s.offset):
            if seg.offset != end:
                return False
            end += seg.length
        return end == self.total_size

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "total_size": self.total_size,
            "complete": self.complete,
            "segments": [s.to_json() for s in self.segments],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Metainfo:
        segs = tuple(SegmentMeta.from_json(s) for s in d["segments"])
        return cls(digest=d["digest"], total_size=d["total_size"], segments=segs)


@dataclass(frozen=True)
class HeartbeatReply:
    """``reannounce`` is true when the tracker did not know this agent alive: send all holdings."""

    registered: bool
    reannounce: bool
    agent_ttl: float
    heartbeat_interval: float
    lease_ttl: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeartbeatReply:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class LookupReply:
    """Who to fetch a layer from, and whether this asker must go to the upstream.

    ``action``: ``peers`` (someone in the region holds it: fetch from ``peers``), ``fetch`` (the
    asker holds the region's lease: fetch from upstream and announce progress), ``wait`` (another
    agent of the region holds the lease: pipeline from ``peers`` if any, else ask again after
    ``retry_after`` seconds).

    ``parent``: when the asker asked for one (``assign``), the agent whose free child slot the
    tracker claimed for it (listed first in ``peers``); None when no slot was free. Absent from
    the JSON when None, as trackers before the field sent it.
    """

    action: Action
    peers: tuple[Peer, ...]
    metainfo: Metainfo | None = None
    lease_holder: str | None = None
    retry_after: float = 0.0
    parent: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "peers": [p.to_json() for p in self.peers],
            "metainfo": self.metainfo.to_json() if self.metainfo else None,
            "lease_holder": self.lease_holder,
            "retry_after": self.retry_after,
        }
        if self.parent is not None:
            out["parent"] = self.parent
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LookupReply:
        meta = d.get("metainfo")
        return cls(
            action=d["action"],
            peers=tuple(Peer.from_json(p) for p in d["peers"]),
            metainfo=Metainfo.from_json(meta) if meta else None,
            lease_holder=d.get("lease_holder"),
            retry_after=float(d.get("retry_after", 0.0)),
            parent=d.get("parent"),
        )


LAYER_KINDS = ("layer", "config")
LAYER_SOURCES = ("", "cache", "peer", "upstream")


@dataclass(frozen=True)
class LayerProgress:
    """One blob of a preheat: ``kind`` layer or config; ``source`` where the bytes came from
    (cache, peer, upstream; "" while unknown)."""

    digest: str
    size: int
    done_bytes: int
    kind: str = "layer"
    source: str = ""

    @classmethod
    def from_json(cls, raw: Any) -> LayerProgress:
        d = _obj(raw, "layer")
        size = _nonneg_int(d, "size", 0)
        done = _nonneg_int(d, "done_bytes", 0)
        if size and done > size:
            raise InvalidRequest("done_bytes exceeds size")
        kind = _get(d, "kind", str, "layer")
        if kind not in LAYER_KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(LAYER_KINDS)}")
        source = _get(d, "source", str, "")
        if source not in LAYER_SOURCES:
            raise InvalidRequest(f"source must be one of {', '.join(LAYER_SOURCES[1:])}")
        return cls(check_digest(_get(d, "digest", str)), size, done, kind, source)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreheatJob:
    """Pull ``image`` onto agents in scope; ``zone``/``region`` narrow the scope when set."""

    id: str
    image: str
    scope: Literal["seeds", "all"]
    zone: str | None
    region: str | None
    created: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PreheatJob:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Invalidation:
    """ "Forget what ``image`` (a tag) pointed to": every agent drops that cached tag record."""

    id: str
    image: str
    created: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> Invalidation:
        d = _obj(raw, "invalidation")
        return cls(
            id=str(_get(d, "id", str)),
            image=str(_get(d, "image", str)),
            created=float(_get(d, "created", (int, float))),
        )
