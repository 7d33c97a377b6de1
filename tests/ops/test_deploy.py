"""deploy/: the Dockerfile, compose demo, Kubernetes manifests, Prometheus and Grafana files.

No Docker engine or cluster here, so each file is checked by the tool that reads it where
one exists offline (kubernetes-validate's JSON schemas, promtool) and otherwise by parsing it
and checking that its parts refer to each other consistently. Every agent command line in
them is parsed by the agent's real config class.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from agent.config import AgentConfig
from core import settings
from tests.ops.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30"

AGENT_METRICS = {
    "layerswarm_upstream_bytes_total",
    "layerswarm_served_bytes_total",
    "layerswarm_requests_total",
    "layerswarm_request_duration_seconds",
    "layerswarm_cache_bytes",
    "layerswarm_cache_evictions_total",
    "layerswarm_peer_received_bytes_total",
    "layerswarm_peer_sent_bytes_total",
    "layerswarm_upstream_errors_total",
    "layerswarm_upstream_saved_bytes_total",
}
TRACKER_METRICS = {
    "layerswarm_fleet_upstream_bytes_total",
    "layerswarm_fleet_peer_received_bytes_total",
    "layerswarm_fleet_savings_ratio",
    "layerswarm_fleet_agents",
    "layerswarm_tracker_requests_total",
    "layerswarm_fleet_region_upstream_bytes_total",
    "layerswarm_fleet_region_peer_received_bytes_total",
}
CONTRACT_METRICS = AGENT_METRICS | TRACKER_METRICS
HISTOGRAMS = {"layerswarm_request_duration_seconds"}
TRACKER_FLAGS = {"--listen", "--store", "--token-file", "--config"}


# --- helpers ------------------------------------------------------------------------------


def parse_agent_args(argv: list[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """What `layerswarm agent ARGV` would run with; raises if a flag or value is wrong."""
    parser = argparse.ArgumentParser(prog="layerswarm agent", exit_on_error=False)
    settings.add_arguments(parser, AgentConfig)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on unknown flags even with exit_on_error=False
        raise AssertionError(f"layerswarm agent rejects {argv}") from exc
    return settings.load(AgentConfig, args, environ=dict(environ or {}))


def check_tracker_args(argv: list[str]) -> dict[str, str]:
    """The tracker's flags as a dict; only flags of its contract are allowed."""
    flags: dict[str, str] = {}
    it = iter(argv)
    for item in it:
        name, sep, value = item.partition("=")
        assert name in TRACKER_FLAGS, f"unknown tracker flag {name}"
        flags[name] = value if sep else next(it)
    return flags


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (label names, functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        name, call = m.group(1), m.group(2)
        if call or name in _KEYWORDS:
            continue
        names.add(name)
    return names


_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "inf", "nan",
    "by", "without", "on", "ignoring", "group_left", "group_right",
}  # fmt: skip


def contract_name(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in HISTOGRAMS:
            return base
    return name


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is needed (Debian package prometheus, scripts/bootstrap.sh)")
    return path


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def test_metric_names_helper() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, kind) (rate(a_bucket{status=~"5.."}[5m]))) '
        "/ on () group_left b and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    logical: list[str] = []
    buf = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    out = []
    for item in logical:
        word, _, rest = item.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_base_is_pinned() -> None:
    instructions = dockerfile_instructions()
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    froms = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for written in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], written)
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+-slim", image), image
        assert not image.endswith(":latest")


def test_dockerfile_runtime_stage_runs_unprivileged_with_a_healthcheck() -> None:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(instructions) if w == "FROM")
    final = instructions[last_from:]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")

    [health] = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "/healthz" in health or "HEALTHCHECK_URL" in health
    assert "python" in health
    assert "curl" not in health and "wget" not in health
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "HEALTHCHECK_URL=http://127.0.0.1:5050/healthz" in env

    exposed = {p for word, rest in final if word == "EXPOSE" for p in rest.split()}
    assert {"5050", "7070"} <= exposed
    [entrypoint] = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    assert entrypoint == ["layerswarm"]
    [cmd] = [json.loads(rest) for word, rest in final if word == "CMD"]
    assert cmd[0] == "agent"
    config = parse_agent_args(cmd[1:])
    assert config.listen_host_port == ("0.0.0.0", 5050)


def test_dockerfile_installs_dependencies_before_copying_code() -> None:
    instructions = dockerfile_instructions()
    copies = [(i, rest.split()) for i, (w, rest) in enumerate(instructions) if w == "COPY"]
    source_copies = [
        i for i, parts in copies if "--from=build" not in parts and "pyproject.toml" not in parts
    ]
    [pyproject_at] = [i for i, parts in copies if "pyproject.toml" in parts]
    dep_install = [
        i
        for i, (w, rest) in enumerate(instructions)
        if w == "RUN" and "pip install" in rest and "-r" in rest
    ]
    assert dep_install and source_copies
    assert pyproject_at < dep_install[0] < min(source_copies)

    # The packages copied are exactly the ones pyproject packages.
    copied = {parts[0].rstrip("/") for i, parts in copies if i in source_copies and len(parts) == 2}
    with (REPO_ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert copied == {p.rstrip("*") for p in include}


def test_dockerignore_keeps_the_build_inputs() -> None:
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "core/", "agent/", "tracker/", "layerswarm/"):
        assert not any(needed.startswith(pattern.lstrip("*/")) for pattern in ignored), needed
    for unwanted in (".venv/", "tests/", "**/.git"):
        assert unwanted in ignored


# --- docker-compose -----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def flags_of(command: list[str]) -> dict[str, str]:
    out = {}
    for item in command:
        if item.startswith("--"):
            k, _, v = item.partition("=")
            out[k] = v
    return out


def test_compose_demo_fleet_is_consistent() -> None:
    data = compose()
    services: dict[str, Any] = data["services"]
    assert {"upstream", "redis", "tracker", "agent-a", "agent-b", "agent-c"} <= set(services)
    subnet = ipaddress.ip_network(data["networks"]["fleet"]["ipam"]["config"][0]["subnet"])

    addresses = {}
    host_ports = []
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for secret in svc.get("secrets", []):
            assert secret in data["secrets"]
        ip = ipaddress.ip_address(svc["networks"]["fleet"]["ipv4_address"])
        assert ip in subnet
        addresses[name] = str(ip)
        for port in svc.get("ports", []):
            host, host_port, _ = str(port).split(":")
            assert host == "127.0.0.1", "demo ports stay on loopback"
            host_ports.append(host_port)
        if "build" in svc:
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert len(set(addresses.values())) == len(addresses)
    assert len(set(host_ports)) == len(host_ports)
    for secret in data["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file()

    upstream_port = services["upstream"]["environment"]["REGISTRY_HTTP_ADDR"].split(":")[1]
    assert services["upstream"]["image"].startswith("registry:2.")
    tracker = check_tracker_args(services["tracker"]["command"][1:])
    tracker_port = tracker["--listen"].split(":")[1]
    assert urlsplit(tracker["--store"]).hostname == "redis"
    assert services["tracker"]["command"][0] == "tracker"

    zones = set()
    for name in ("agent-a", "agent-b", "agent-c"):
        command = services[name]["command"]
        assert command[0] == "agent"
        config = parse_agent_args(command[1:])
        zones.add(config.zone)
        for tracker_url in config.tracker.split(","):
            parts = urlsplit(tracker_url)
            assert parts.hostname == "tracker" and str(parts.port) == tracker_port
        upstream = config.upstreams[config.default_upstream]
        parts = urlsplit(upstream.url)
        assert parts.hostname == "upstream" and str(parts.port) == upstream_port
        assert config.advertise_address == addresses[name]
        assert str(config.tracker_token_file) == "/run/secrets/tracker_token"
        assert services[name]["depends_on"]["tracker"]["condition"] == "service_healthy"
    assert len(zones) == 3


# --- Kubernetes ---------------------------------------------------------------------------


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind]


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    checked = 0
    for path, doc in k8s_docs():
        if doc["kind"] in ("ServiceMonitor", "Kustomization"):
            continue  # custom resources: not in the core schemas, checked below
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name} {doc['kind']}: {exc.message}") from None
        checked += 1
    assert checked >= 10


def test_schema_validation_can_fail() -> None:
    service = by_kind("Service")[0]
    bad = {**service, "spec": {**service["spec"], "portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    [kustomization] = by_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def pod_specs() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for kind in ("DaemonSet", "Deployment"):
        for doc in by_kind(kind):
            template = doc["spec"]["template"]
            yield doc["metadata"]["name"], template["metadata"]["labels"], template["spec"]


def test_references_between_manifests_resolve() -> None:
    names = {(doc["kind"], doc.get("metadata", {}).get("name")) for _, doc in k8s_docs()}
    pods = list(pod_specs())
    for _, _, spec in pods:
        for container in spec.get("initContainers", []) + spec["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    [cm] = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == ref["name"]]
                    assert ref["key"] in cm["data"]
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec.get("volumes", [])}
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
    # Every Service and the PodDisruptionBudget select pods that exist.
    for svc in by_kind("Service"):
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= labels.items() for _, labels, _ in pods), svc
    for pdb in by_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for _, labels, _ in pods)
    for _, doc in k8s_docs():
        if doc["kind"] not in ("Namespace", "Kustomization"):
            assert doc["metadata"]["namespace"] == "layerswarm"


def test_every_container_is_pinned_limited_and_locked_down() -> None:
    for name, _, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            label = f"{name}/{container['name']}"
            image = container["image"]
            assert ":" in image and not image.endswith(":latest"), label
            assert container["resources"]["requests"], label
            assert container["resources"]["limits"]["memory"], label
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, label
            assert sc["readOnlyRootFilesystem"] is True, label
            assert sc["capabilities"]["drop"] == ["ALL"], label
            runs_as_root = sc.get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
            if container in spec["containers"]:
                assert runs_as_root not in (None, 0), f"{label} must not run as root"


def test_agent_daemonset() -> None:
    [ds] = by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    [agent] = spec["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert agent[probe]["httpGet"]["path"] == "/healthz"
        assert agent[probe]["httpGet"]["port"] == 5050

    # The agent's real config, from its args plus the ConfigMap it reads.
    [cm] = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "layerswarm-agent"]
    env = {k: v for k, v in cm["data"].items() if k.startswith("LAYERSWARM_")}
    env["LAYERSWARM_ADVERTISE_ADDRESS"] = "192.0.2.1"
    assert agent["args"][0] == "agent"
    config = parse_agent_args(agent["args"][1:], environ=env)
    assert config.listen_host_port[1] == 5050
    assert str(config.data_dir) in {m["mountPath"] for m in agent["volumeMounts"]}
    token_dir = str(config.tracker_token_file).rsplit("/", 1)[0]
    assert token_dir in {m["mountPath"] for m in agent["volumeMounts"]}
    [tracker_svc] = [s for s in by_kind("Service") if s["metadata"]["name"] == "layerswarm-tracker"]
    parts = urlsplit(config.tracker)
    assert parts.hostname is not None
    assert parts.hostname.split(".")[0] == "layerswarm-tracker"
    assert parts.port == tracker_svc["spec"]["ports"][0]["port"]
    # Every registry containerd is pointed at is one the agent knows how to reach.
    assert set(cm["data"]["MIRRORED_REGISTRIES"].split()) <= set(config.upstreams)

    # The init container runs our own configure command against the host's containerd.
    init = {c["name"]: c for c in spec["initContainers"]}
    script = " ".join(init["configure-containerd"]["command"])
    assert "layerswarm configure containerd" in script
    assert "--mirror http://127.0.0.1:5050" in script
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths["containerd-etc"] == "/etc/containerd"
    mount = {m["name"]: m["mountPath"] for m in init["configure-containerd"]["volumeMounts"]}
    assert f"--certs-dir {mount['containerd-etc']}/certs.d" in script
    assert host_paths["data"] == "/var/lib/layerswarm"


def test_configure_script_in_the_init_container_runs(tmp_path: Path) -> None:
    """The init container's shell script, run here with the host paths under tmp_path."""
    [ds] = by_kind("DaemonSet")
    init = next(
        c
        for c in ds["spec"]["template"]["spec"]["initContainers"]
        if c["name"] == "configure-containerd"
    )
    script = init["command"][2].replace("/host/etc/containerd", str(tmp_path))
    script = script.replace("exec layerswarm", f"exec {sys.executable} -m layerswarm")
    [cm] = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "layerswarm-agent"]
    result = subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
        env={
            "MIRRORED_REGISTRIES": cm["data"]["MIRRORED_REGISTRIES"],
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr
    for registry in cm["data"]["MIRRORED_REGISTRIES"].split():
        with (tmp_path / "certs.d" / registry / "hosts.toml").open("rb") as f:
            assert "http://127.0.0.1:5050" in tomllib.load(f)["host"]


def test_tracker_deployment_and_redis() -> None:
    [tracker] = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "layerswarm-tracker"]
    assert tracker["spec"]["replicas"] == 2
    [pdb] = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    [container] = tracker["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "tracker"
    check_tracker_args(container["args"][1:])
    [cm] = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "layerswarm-tracker"]
    store = urlsplit(cm["data"]["LAYERSWARM_STORE"])
    [redis_svc] = [s for s in by_kind("Service") if s["metadata"]["name"] == "layerswarm-redis"]
    assert store.scheme == "redis"
    assert store.hostname is not None
    assert store.hostname.split(".")[0] == "layerswarm-redis"
    assert store.port == redis_svc["spec"]["ports"][0]["port"]
    listen_port = int(cm["data"]["LAYERSWARM_LISTEN"].rsplit(":", 1)[1])
    assert container["ports"][0]["containerPort"] == listen_port
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_service_monitor_structure() -> None:
    [sm] = by_kind("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert spec["namespaceSelector"]["matchNames"] == [sm["metadata"]["namespace"]]
    [expression] = spec["selector"]["matchExpressions"]
    assert expression["operator"] == "In"
    selected = [
        s
        for s in by_kind("Service")
        if s["metadata"]["labels"].get(expression["key"]) in expression["values"]
    ]
    assert {s["metadata"]["name"] for s in selected} == {"layerswarm-agent", "layerswarm-tracker"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])
        for svc in selected:
            assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    # The job label must give the job names rules.yml matches on.
    for svc in selected:
        assert svc["metadata"]["labels"][spec["jobLabel"]] in {
            "layerswarm-agent",
            "layerswarm-tracker",
        }


# --- Prometheus ---------------------------------------------------------------------------


def test_promtool_accepts_config_and_rules() -> None:
    result = run([promtool(), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_alert_rules_unit_tests_pass() -> None:
    result = run([promtool(), "test", "rules", "rules_test.yml"], cwd=DEPLOY / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_can_fail(tmp_path: Path) -> None:
    """With the error threshold raised, the upstream-error alert must no longer fire."""
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
    assert "> 0.05" in rules
    (tmp_path / "rules.yml").write_text(rules.replace("> 0.05", "> 0.5"))
    shutil.copy(DEPLOY / "prometheus" / "rules_test.yml", tmp_path)
    result = run([promtool(), "test", "rules", "rules_test.yml"], cwd=tmp_path)
    assert result.returncode != 0
    assert "LayerswarmUpstreamErrorRateHigh" in result.stdout + result.stderr


def test_alerts_cover_the_runbook_and_use_real_metrics() -> None:
    data = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    rules = [r for g in data["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {
        "LayerswarmAgentDown",
        "LayerswarmTrackerDown",
        "LayerswarmUpstreamErrorRateHigh",
        "LayerswarmFleetSavingsLow",
        "LayerswarmCacheNearlyFull",
    }
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in scrape["scrape_configs"]}
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        for name in metric_names(rule["expr"]):
            assert name == "up" or contract_name(name) in CONTRACT_METRICS, name
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs


# --- Grafana ------------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "layerswarm.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_structure() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "layerswarm.json").read_text())
    panels = dashboard["panels"]
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("savings", "source", "throughput", "requests", "error", "cache size"):
        assert topic in titles, topic
    for topic in ("evictions", "peer bytes", "agents"):
        assert topic in titles, topic
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"], p["title"]
        grid = p["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


def test_dashboard_reads_only_contract_metrics_and_all_of_them() -> None:
    used = set()
    for expr in dashboard_exprs():
        names = {contract_name(n) for n in metric_names(expr)}
        assert names, expr
        assert names <= CONTRACT_METRICS, (expr, names - CONTRACT_METRICS)
        used |= names
    assert used == CONTRACT_METRICS


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query as a recording rule."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m")}
                    for i, e in enumerate(dashboard_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    # And it does reject a broken one.
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(("}]}]})
    )
    assert run([promtool(), "check", "rules", str(path)]).returncode != 0
