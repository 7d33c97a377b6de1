"""The agent's Prometheus metrics, created against an injected registry (none at import time).

Labels are bounded: ``source`` is cache|upstream|peer, ``kind`` a request kind, ``status``
an HTTP status code, ``upstream`` a configured registry name, ``reason`` a short fixed word,
``outcome`` one of NO_SPACE_OUTCOMES.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SOURCES = ("cache", "upstream", "peer")
NO_SPACE_OUTCOMES = ("refused", "aborted", "manifest_not_stored")


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
    peer_bytes: Counter
    peer_uploaded_bytes: Counter
    no_space: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentMetrics:
        m = cls(
            registry=registry,
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
                "Registry API requests answered, by kind and HTTP status",
                ["kind", "status"],
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
            peer_bytes=Counter(
                "layerswarm_peer_bytes", "Bytes received from peers", registry=registry
            ),
            peer_uploaded_bytes=Counter(
                "layerswarm_peer_uploaded_bytes", "Bytes uploaded to peers", registry=registry
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
        return m
