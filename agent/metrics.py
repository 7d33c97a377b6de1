"""The agent's Prometheus metrics, created against an injected registry (none at import time).

Labels are bounded: ``source`` is cache|upstream|peer, ``kind`` a request kind, ``code``
an HTTP status code (the same label name as the tracker's), ``upstream`` a configured
registry name, ``reason`` one word of ``core.failures.REASONS``, ``outcome`` one of
NO_SPACE_OUTCOMES. Every labelled error counter has its series at 0 from the start, so
``rate()`` and alerts see the first error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.failures import REASONS

SOURCES = ("cache", "upstream", "peer")
NO_SPACE_OUTCOMES = ("refused", "aborted", "manifest_not_stored")
# Where a download can come from (the names of agent/fetch.py's sources).
FETCH_SOURCES = ("upstream", "peer")


# Docker Hub's "ratelimit-remaining: 76;w=21600": the count before any parameters.
_RATE_LIMIT_VALUE = re.compile(r"^\s*(\d+)")
# Where served bytes did not have to come from the upstream.
_SAVED_SOURCES = ("cache", "peer")


class PairedCounter:
    """Counts into two counters at once: a metric under its symmetric name and under the
    name an earlier contract spelled out (``layerswarm_peer_bytes_total``)."""

    def __init__(self, primary: Counter, alias: Counter) -> None:
        self.primary = primary
        self.alias = alias

    def inc(self, amount: float = 1) -> None:
        self.primary.inc(amount)
        self.alias.inc(amount)


@dataclass
class ByteTotals:
    """The byte counts since start that the heartbeat reports (the tracker sums them into
    fleet totals), kept as plain numbers beside the counters that export the same counts."""

    served: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCES, 0))
    upstream: int = 0
    peer_received: int = 0
    peer_sent: int = 0


@dataclass
class AgentMetrics:
    registry: CollectorRegistry
    upstream_bytes: Counter
    served_bytes: Counter
    requests: Counter
    request_seconds: Histogram
    cache_bytes: Gauge
    cache_blobs: Gauge
    evictions: Counter
    upstream_errors: Counter
    verify_failures: Counter
    inflight: Gauge
    first_byte_seconds: Histogram
    fetch_seconds: Histogram
    peer_bytes: PairedCounter
    peer_uploaded_bytes: Counter
    no_space: Counter
    upstream_saved_bytes: Counter
    ratelimit_remaining: Gauge
    ratelimit_limit: Gauge
    totals: ByteTotals = field(default_factory=ByteTotals)

    @classmethod
    def create(cls, registry: CollectorRegistry, upstreams: Sequence[str] = ()) -> AgentMetrics:
        """``upstreams``: the configured registry names, whose error series start at 0."""
        m = cls(
            registry=registry,
            upstream_saved_bytes=Counter(
                "layerswarm_upstream_saved_bytes",
                "Bytes of an upstream's content sent to clients from the cache or from peers, "
                "i.e. not fetched from it again",
                ["upstream"],
                registry=registry,
            ),
            ratelimit_remaining=Gauge(
                "layerswarm_upstream_ratelimit_remaining",
                "Pulls left in the upstream's rate-limit window, as its last answer said "
                "(ratelimit-remaining; absent for upstreams that send none)",
                ["upstream"],
                registry=registry,
            ),
            ratelimit_limit=Gauge(
                "layerswarm_upstream_ratelimit_limit",
                "Pulls allowed per rate-limit window, as the upstream's last answer said "
                "(ratelimit-limit)",
                ["upstream"],
                registry=registry,
            ),
            upstream_bytes=Counter(
                "layerswarm_upstream_bytes",
                "Bytes of blobs and manifests fetched from upstream registries",
                ["upstream"],
                registry=registry,
            ),
            served_bytes=Counter(
                "layerswarm_served_bytes",
                "Bytes sent to clients, by where they came from",
                ["source"],
                registry=registry,
            ),
            requests=Counter(
                "layerswarm_requests",
                "Registry API requests answered, by kind and HTTP status code",
                ["kind", "code"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "layerswarm_request_duration_seconds",
                "Time to answer a registry API request (until the last byte)",
                ["kind"],
                registry=registry,
                buckets=(
                    0.001,
                    0.0025,
                    0.005,
                    0.01,
                    0.025,
                    0.05,
                    0.1,
                    0.25,
                    0.5,
                    1,
                    2.5,
                    5,
                    10,
                    30,
                    60,
                    300,
                ),
            ),
            cache_bytes=Gauge(
                "layerswarm_cache_bytes", "Bytes of blobs in the cache", registry=registry
            ),
            cache_blobs=Gauge("layerswarm_cache_blobs", "Blobs in the cache", registry=registry),
            evictions=Counter(
                "layerswarm_cache_evictions",
                "Blobs evicted to stay within --cache-size",
                registry=registry,
            ),
            upstream_errors=Counter(
                "layerswarm_upstream_errors",
                "Upstream requests that failed, by upstream and reason",
                ["upstream", "reason"],
                registry=registry,
            ),
            verify_failures=Counter(
                "layerswarm_verify_failures",
                "Downloads discarded because their bytes did not match the digest",
                ["source"],
                registry=registry,
            ),
            inflight=Gauge(
                "layerswarm_inflight_downloads", "Blob downloads in progress", registry=registry
            ),
            first_byte_seconds=Histogram(
                "layerswarm_blob_first_byte_seconds",
                "Time from a blob request to its first byte sent, by source",
                ["source"],
                registry=registry,
            ),
            fetch_seconds=Histogram(
                "layerswarm_blob_fetch_seconds",
                "Time to fetch a whole blob into the cache, by source",
                ["source"],
                registry=registry,
                buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            ),
            peer_bytes=PairedCounter(
                Counter(
                    "layerswarm_peer_received_bytes",
                    "Bytes received from peers",
                    registry=registry,
                ),
                Counter(
                    "layerswarm_peer_bytes",
                    "Bytes received from peers (the first name of "
                    "layerswarm_peer_received_bytes_total, kept for existing queries)",
                    registry=registry,
                ),
            ),
            peer_uploaded_bytes=Counter(
                "layerswarm_peer_sent_bytes", "Bytes sent to peers", registry=registry
            ),
            no_space=Counter(
                "layerswarm_no_space",
                "Writes the disk could not take: blobs refused before headers, downloads "
                "aborted mid-blob, manifests or tags served without being stored",
                ["outcome"],
                registry=registry,
            ),
        )
        for s in SOURCES:
            m.served_bytes.labels(s)
        for outcome in NO_SPACE_OUTCOMES:
            m.no_space.labels(outcome)
        for s in FETCH_SOURCES:
            m.verify_failures.labels(s)
        for upstream in upstreams:
            m.upstream_bytes.labels(upstream)
            m.upstream_saved_bytes.labels(upstream)
            for reason in REASONS:
                m.upstream_errors.labels(upstream, reason)
        return m

    def count_served(self, source: str, upstream: str, amount: int) -> None:
        """Bytes of one response sent to a client from ``source``, for ``upstream``: counted
        once, where the response ends. Bytes from the cache or from peers are saved ones."""
        self.served_bytes.labels(source).inc(amount)
        self.totals.served[source] = self.totals.served.get(source, 0) + amount
        if source in _SAVED_SOURCES and upstream:
            self.upstream_saved_bytes.labels(upstream).inc(amount)

    def count_upstream(self, upstream: str, amount: int) -> None:
        """Bytes of blobs and manifests received from ``upstream``."""
        self.upstream_bytes.labels(upstream).inc(amount)
        self.totals.upstream += amount

    def count_peer_received(self, amount: int) -> None:
        self.peer_bytes.inc(amount)
        self.totals.peer_received += amount

    def count_peer_sent(self, amount: int) -> None:
        self.peer_uploaded_bytes.inc(amount)
        self.totals.peer_sent += amount

    def observe_rate_limit(self, upstream: str, headers: Mapping[str, str]) -> None:
        """Keep the headroom an upstream's answer states (Docker Hub: ``ratelimit-*``)."""
        for header, gauge in (
            ("RateLimit-Remaining", self.ratelimit_remaining),
            ("RateLimit-Limit", self.ratelimit_limit),
        ):
            raw = headers.get(header)
            m = _RATE_LIMIT_VALUE.match(raw) if raw else None
            if m is not None:
                gauge.labels(upstream).set(int(m.group(1)))
