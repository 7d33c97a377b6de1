"""Every metric and label the Grafana dashboard and the alert rules use exists on a real agent
and a real tracker, and the metrics follow Prometheus conventions (no ``_created`` series,
labelled error counters at 0 before the first error, one request-latency histogram name and
one status label name on both daemons).

tests/ops/test_deploy.py checks the files against a list of names; this checks them against
what the daemons really export, scraped over HTTP.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import defaultdict

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.conftest import Node
from tests.ops.test_deploy import DEPLOY, metric_names

pytestmark = pytest.mark.integration

# Labels Prometheus adds at scrape time; no exporter sends them.
TARGET_LABELS = {"instance", "job"}
# Series Prometheus makes itself.
SYNTHETIC = {"up"}

Samples = dict[str, set[str]]  # sample name -> label names seen on it
Values = dict[tuple[str, frozenset[tuple[str, str]]], float]  # (name, labels) -> value
Exported = tuple[list[str], Samples, Values]


def scrape(url: str) -> tuple[str, Samples, Values]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    labels: Samples = defaultdict(set)
    values: Values = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels[s.name] |= set(s.labels)
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return text, dict(labels), values


def labels_used(expr: str) -> set[str]:
    """Label names an expression groups, joins or matches on."""
    names: set[str] = set()
    for m in re.finditer(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        names |= {n.strip() for n in m.group(1).split(",") if n.strip()}
    for m in re.finditer(r"\{([^}]*)\}", expr):
        names |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1)))
    return names


def uses() -> list[tuple[str, str, set[str]]]:
    """(where, expression, extra labels its legend or annotations name) for every query."""
    out: list[tuple[str, str, set[str]]] = []
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
                out.append((f"{path.name}: {panel['title']}", target["expr"], legend))
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            text = " ".join(str(v) for v in rule.get("annotations", {}).values())
            named = set(re.findall(r"\$labels\.(\w+)", text))
            out.append((f"rules.yml: {rule['alert']}", rule["expr"], named))
    return out


@pytest.fixture
def exported(node: Node) -> Exported:
    # A heartbeat taken (the fleet's per-region series exist once an agent reported) and a
    # request of each daemon's own, so request counters and histograms have a series.
    deadline = time.monotonic() + 30
    while True:
        with urllib.request.urlopen(f"{node.agent.url}/healthz", timeout=10) as r:
            if json.loads(r.read())["tracker"]["state"] == "ok":
                break
        assert time.monotonic() < deadline, node.logs()
        time.sleep(0.1)
    with urllib.request.urlopen(f"{node.agent.url}/v2/", timeout=10):
        pass
    texts: list[str] = []
    samples: Samples = defaultdict(set)
    values: Values = {}
    for url in (node.agent.url, node.tracker_url):
        text, found, vals = scrape(url)
        texts.append(text)
        values.update(vals)
        for name, labels in found.items():
            samples[name] |= labels
    return texts, dict(samples), values


def test_every_dashboard_and_rule_metric_and_label_is_exported(
    exported: Exported,
) -> None:
    _, samples, _ = exported
    problems = []
    for where, expr, extra in uses():
        names = metric_names(expr) - SYNTHETIC
        for name in sorted(names - set(samples)):
            problems.append(f"{where}: no metric {name}")
        available = set().union(*(samples.get(n, set()) for n in names)) | TARGET_LABELS
        if "up" in metric_names(expr):
            available |= TARGET_LABELS
        for label in sorted((labels_used(expr) | extra) - available):
            problems.append(f"{where}: no label {label!r} on {sorted(names)}")
    assert not problems, "\n".join(problems)


def test_labels_used_finds_grouping_and_matchers() -> None:
    expr = 'sum by (kind, code) (rate(x{code=~"5..", upstream!="a"}[5m])) / on (kind) y'
    assert labels_used(expr) == {"kind", "code", "upstream"}


def test_metrics_follow_prometheus_conventions(
    exported: Exported,
    node: Node,
) -> None:
    texts, samples, values = exported
    # A counter's _created series is a timestamp that reads like a count.
    assert not [n for n in samples if n.endswith("_created")], sorted(samples)
    # One request-latency histogram name and one status label name on both daemons.
    assert samples["layerswarm_request_duration_seconds_bucket"] >= {"kind", "le"}
    assert samples["layerswarm_tracker_request_duration_seconds_bucket"] >= {"endpoint", "le"}
    assert "code" in samples["layerswarm_requests_total"]
    assert "code" in samples["layerswarm_tracker_requests_total"]
    assert not any("status" in labels for labels in samples.values())
    # Peer bytes both ways under symmetric names (and the first name kept for received).
    for name in (
        "layerswarm_peer_received_bytes_total",
        "layerswarm_peer_sent_bytes_total",
        "layerswarm_peer_bytes_total",
        "layerswarm_fleet_peer_received_bytes_total",
        "layerswarm_fleet_peer_sent_bytes_total",
        "layerswarm_fleet_upstream_bytes_total",
        "layerswarm_fleet_savings_ratio",
    ):
        assert name in samples, name
    # Labelled error counters exist at 0 before any error happened.
    upstream = node.registry.host_port
    for reason in ("timeout", "refused", "tls", "status"):
        key = (
            "layerswarm_upstream_errors_total",
            frozenset({("upstream", upstream), ("reason", reason)}),
        )
        assert values.get(key) == 0.0, (reason, texts[0])
    for source in ("upstream", "peer"):
        key = ("layerswarm_verify_failures_total", frozenset({("source", source)}))
        assert values.get(key) == 0.0, source
    for action in ("peers", "fetch", "wait"):
        key = ("layerswarm_tracker_lookups_total", frozenset({("action", action)}))
        assert values.get(key) == 0.0, action
