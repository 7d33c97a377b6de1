"""Every metric the tracker exports, created against an injected registry.

Labels are bounded: endpoint (a route pattern), status code, lookup action, agent role. No
digest or agent id ever becomes a label.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.wire import Counters


class FleetCollector(Collector):
    """Fleet-wide figures from the agents' reported counters, refreshed before each scrape.

    The store is async and ``collect`` is not, so the /metrics handler reads the store and
    calls ``update`` first; ``collect`` only formats the latest snapshot.
    """

    def __init__(self) -> None:
        self._totals = Counters()
        self._roles: dict[str, int] = {"peer": 0, "seed": 0}
        self._regions: dict[str, Counters] = {}

    def update(
        self, totals: Counters, roles: dict[str, int], regions: dict[str, Counters] | None = None
    ) -> None:
        self._totals = totals
        self._roles = dict(roles)
        self._regions = dict(regions or {})

    def describe(self) -> Iterable[Metric]:
        # Registering must not call collect (the snapshot is empty then); names are unique anyway.
        return []

    def collect(self) -> Iterable[Metric]:
        t = self._totals
        yield CounterMetricFamily(
            "layerswarm_fleet_upstream_bytes",
            "Bytes the fleet's agents fetched from upstream registries since the fleet began "
            "(agents that left included; never decreases)",
            value=t.upstream_bytes,
        )
        yield CounterMetricFamily(
            "layerswarm_fleet_peer_received_bytes",
            "Bytes the fleet's agents received from peers (sum of reported counters)",
            value=t.peer_bytes,
        )
        yield CounterMetricFamily(
            "layerswarm_fleet_peer_sent_bytes",
            "Bytes the fleet's agents sent to peers (sum of reported counters)",
            value=t.uploaded_bytes,
        )
        moved = t.peer_bytes + t.upstream_bytes
        yield GaugeMetricFamily(
            "layerswarm_fleet_savings_ratio",
            "Share of layer bytes from peers rather than upstream: peer / (peer + upstream)",
            value=t.peer_bytes / moved if moved else 0.0,
        )
        by_region = CounterMetricFamily(
            "layerswarm_fleet_region_upstream_bytes",
            "Bytes each region's agents fetched from upstream registries, since the fleet began "
            '(region="" for agents without --region)',
            labels=["region"],
        )
        peers_by_region = CounterMetricFamily(
            "layerswarm_fleet_region_peer_received_bytes",
            "Bytes each region's agents received from peers, since the fleet began",
            labels=["region"],
        )
        for region, c in sorted(self._regions.items()):
            by_region.add_metric([region], c.upstream_bytes)
            peers_by_region.add_metric([region], c.peer_bytes)
        yield by_region
        yield peers_by_region
        agents = GaugeMetricFamily(
            "layerswarm_fleet_agents", "Live agents by role", labels=["role"]
        )
        for role in ("peer", "seed"):
            agents.add_metric([role], self._roles.get(role, 0))
        yield agents


class TrackerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "layerswarm_tracker_requests",
            "Tracker HTTP requests by endpoint and status code",
            ["endpoint", "code"],
            registry=registry,
        )
        # The same name and label names as the agent's request metrics, prefixed.
        self.latency = Histogram(
            "layerswarm_tracker_request_duration_seconds",
            "Tracker HTTP request latency by endpoint",
            ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=registry,
        )
        self.lookups = Counter(
            "layerswarm_tracker_lookups",
            "Lookups answered, by action (peers, fetch: lease granted, wait: lease held elsewhere)",
            ["action"],
            registry=registry,
        )
        self.parent_choices = Counter(
            "layerswarm_tracker_parent_choices",
            "Lookups that asked the tracker to choose a relay parent, by outcome (assigned: a "
            "free slot was claimed; none: no candidate had one)",
            ["outcome"],
            registry=registry,
        )
        self.bad_peer_reports = Counter(
            "layerswarm_tracker_bad_peer_reports",
            "Peers reported bad by other agents",
            registry=registry,
        )
        self.preheat_jobs = Counter(
            "layerswarm_tracker_preheat_jobs",
            "Preheat jobs created, by source (api or webhook)",
            ["source"],
            registry=registry,
        )
        for action in ("peers", "fetch", "wait"):
            self.lookups.labels(action)
        for outcome in ("assigned", "none"):
            self.parent_choices.labels(outcome)
        for source in ("api", "webhook"):
            self.preheat_jobs.labels(source)
        self.fleet = FleetCollector()
        registry.register(self.fleet)
        # labels() takes a lock and builds a key on every call; the label sets are bounded
        # (route patterns x status codes), so the children are looked up once each.
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._lookup_children: dict[str, Any] = {}

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one finished request and observe its latency."""
        children = self._request_children.get((endpoint, status))
        if children is None:
            children = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
            self._request_children[(endpoint, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def lookup_done(self, action: str) -> None:
        child = self._lookup_children.get(action)
        if child is None:
            child = self._lookup_children[action] = self.lookups.labels(action)
        child.inc()
