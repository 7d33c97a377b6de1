"""``layerswarm doctor``: check this node end to end and say how to fix what is wrong.

Each check prints ``OK``, ``WARN`` or ``FAIL`` with what was found and, when it is not OK,
the fix. In order: the agent answers (``/healthz``, ``/v2/``) and describes its running
config (``/v1/config``); each tracker replica answers and accepts the fleet token; the agent
has a ``--region`` when its peers have one; each upstream answers ``/v2/``; the data
directory has room; a container runtime is actually pointed at the agent (through a
Docker-compatible API when one answers, which dockerd and ``podman system service`` both
provide, otherwise by reading daemon.json, containerd's certs.d and the
containers-registries.conf drop-in), and every registry it sends there is one the running
agent mirrors.

The agent's own flags, env vars and config file describe the node (``--config``,
``--upstream``, ``--tracker``...), so ``doctor`` run with the agent's environment checks
exactly what the agent uses. Every network call has a short timeout. Exit status: 0 when no
check failed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.config import AgentConfig, Upstream, canonical_registry, registry_from_prefix
from core import settings
from core.failures import classify
from core.fleettoken import read_fleet_token
from core.settings import ConfigError, parse_duration
from layerswarm.preheat_cmd import human_bytes
from layerswarm.runtimeconf import containerd
from layerswarm.runtimeconf.paths import add_path_arguments
from layerswarm.trackerapi import (
    TrackerAPI,
    TrackerRefused,
    TrackerUnreachable,
    http_request,
)

Level = Literal["OK", "WARN", "FAIL"]
DEFAULT_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")
LOW_DISK_FRACTION = 0.10


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.level:<4}  {self.name}: {self.detail}"]
        if self.fix and self.level != "OK":
            out.append(f"      fix: {self.fix}")
        return out


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, AgentConfig)
    parser.add_argument(
        "--agent",
        metavar="URL",
        default=None,
        help="the agent's address (default: http:// + the agent's --listen, 0.0.0.0 read as "
        "127.0.0.1)",
    )
    parser.add_argument(
        "--docker-host",
        metavar="URL",
        default=None,
        help="a Docker-compatible API to ask for its mirrors (default: $DOCKER_HOST, then "
        + ", ".join(DEFAULT_DOCKER_SOCKETS)
        + " when present); none: skip the API and read the config files",
    )
    add_path_arguments(parser)
    parser.add_argument(
        "--timeout",
        default="3s",
        metavar="DURATION",
        help="timeout of each network check (default: 3s)",
    )


# -- addresses --------------------------------------------------------------------------------


def agent_url_from(listen: str) -> str:
    host, port = settings.parse_hostport(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _host_port(raw: str) -> tuple[str, int | None]:
    parts = urlsplit(raw if "://" in raw else f"//{raw}")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None and parts.scheme in ("http", "https"):
        port = 80 if parts.scheme == "http" else 443
    return host, port


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_endpoint(mirror: str, agent_url: str) -> bool:
    """Whether a mirror entry (``http://h:p``, ``h:p/registry``...) names the agent."""
    mh, mp = _host_port(mirror)
    ah, ap = _host_port(agent_url)
    if mp is not None and ap is not None and mp != ap:
        return False
    return mh == ah or (_loopback(mh) and _loopback(ah))


# -- the checks --------------------------------------------------------------------------------


def check_agent(
    agent_url: str, timeout: float, token_file: str | None
) -> tuple[list[Check], dict[str, Any] | None]:
    """The agent's health and registry API. ``token_file`` is the agent's own (from its
    ``/v1/config``, else doctor's flags), for the fix when the tracker refuses the agent."""
    fix = (
        f"start the agent (`systemctl start layerswarm-agent` or `layerswarm agent ...`) or "
        f"point --agent at it; check that it listens on {agent_url}"
    )
    try:
        resp = http_request(f"{agent_url}/healthz", timeout=timeout)
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        return [Check("agent", "FAIL", f"{agent_url}/healthz: no answer ({reason})", fix)], None
    if resp.status != 200:
        return [
            Check("agent", "FAIL", f"{agent_url}/healthz answered HTTP {resp.status}", fix)
        ], None
    try:
        health = resp.json()
    except ValueError:
        health = {}
    checks = [Check("agent", "OK", f"{agent_url}/healthz answers")]
    tracker = health.get("tracker") if isinstance(health, dict) else None
    if (
        isinstance(health, dict)
        and health.get("status") == "degraded"
        and isinstance(tracker, dict)
    ):
        if tracker.get("state") == "refused":
            where = token_file or "the file given as the agent's --tracker-token-file"
            fix = (
                f"put the fleet token (the tracker's --token-file) in {where} and restart the "
                "agent; until then pulls work, from the upstream only"
            )
        else:
            fix = "pulls work, from the upstream only; see the tracker checks below"
        checks.append(
            Check(
                "agent tracker link",
                "WARN",
                f"{tracker.get('state')}: {tracker.get('reason')}",
                fix,
            )
        )
    try:
        v2 = http_request(f"{agent_url}/v2/", timeout=timeout)
    except OSError as exc:
        checks.append(
            Check("agent registry API", "FAIL", f"{agent_url}/v2/: no answer ({exc})", fix)
        )
    else:
        if v2.status in (200, 401):
            how = "200" if v2.status == 200 else "401 with the upstream's challenge"
            checks.append(Check("agent registry API", "OK", f"{agent_url}/v2/ answers {how}"))
        else:
            checks.append(
                Check(
                    "agent registry API",
                    "FAIL",
                    f"{agent_url}/v2/ answered HTTP {v2.status}; clients will not use the mirror",
                    "read the agent's log (journalctl -u layerswarm-agent)",
                )
            )
    return checks, health if isinstance(health, dict) else None


@dataclass(frozen=True)
class AgentView:
    """The settings the later checks compare against: the running agent's own (``GET
    /v1/config``), or doctor's flags when the agent cannot say (down, or older than the
    endpoint); ``described`` tells which."""

    upstreams: dict[str, str]  # name -> URL
    default_upstream: str
    zone: str
    region: str
    p2p: bool
    tracker_urls: list[str]
    token_file: str | None
    agent_id: str = ""
    described: bool = False

    @classmethod
    def from_config(cls, config: AgentConfig) -> AgentView:
        return cls(
            upstreams={u.name: u.url for u in config.upstreams.values()},
            default_upstream=config.default_upstream,
            zone=config.zone,
            region=config.region,
            p2p=config.p2p,
            tracker_urls=[u for u in config.tracker.split(",") if u],
            token_file=str(config.tracker_token_file) if config.tracker_token_file else None,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentView:
        """Raises ValueError, KeyError, TypeError or AttributeError on an answer of another
        shape (another program on the port, a future format)."""
        ups = {str(u["name"]): str(u["url"]) for u in data["upstreams"]}
        tracker = data.get("tracker") or {}
        token_file = tracker.get("token_file")
        return cls(
            upstreams=ups,
            default_upstream=str(data["default_upstream"]),
            zone=str(data.get("zone") or ""),
            region=str(data.get("region") or ""),
            p2p=bool(data.get("p2p", True)),
            tracker_urls=[str(u) for u in tracker.get("urls") or []],
            token_file=str(token_file) if token_file else None,
            agent_id=str(data.get("agent_id") or ""),
            described=True,
        )

    def summary(self) -> str:
        ups = ", ".join(f"{n} ({u})" for n, u in sorted(self.upstreams.items()))
        where = ", ".join(
            f"{k} {v}" for k, v in (("region", self.region), ("zone", self.zone)) if v
        )
        tracker = (
            "no peers (--no-p2p)"
            if not self.p2p
            else f"tracker {', '.join(self.tracker_urls)}"
            if self.tracker_urls
            else "embedded tracker"
        )
        return (
            f"mirrors {ups}; default {self.default_upstream}; "
            f"{where or 'no region or zone'}; {tracker}"
        )


def check_agent_config(
    agent_url: str, config: AgentConfig, timeout: float
) -> tuple[Check, AgentView]:
    """What the agent runs with, from ``/v1/config``. Doctor's flags may not be the agent's
    (another env, a stale --config), and a runtime's mirror config works only against the
    upstreams the running agent really has; so those are what the later checks use."""
    url = f"{agent_url}/v1/config"
    fix = (
        "upgrade the agent (it describes its config at /v1/config since this release), or "
        "run doctor with the agent's flags, environment or --config"
    )
    try:
        resp = http_request(url, timeout=timeout, max_body=1 << 20)
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        problem = f"no answer ({reason})"
    else:
        if resp.status == 200:
            try:
                data = resp.json()
                view = AgentView.from_json(data if isinstance(data, dict) else {})
            except (ValueError, KeyError, TypeError, AttributeError):
                problem = "answer is not the agent's config"
            else:
                return Check("agent config", "OK", view.summary()), view
        else:
            problem = f"HTTP {resp.status}"
    return Check(
        "agent config",
        "WARN",
        f"{url}: {problem}; checking against doctor's own flags instead",
        fix,
    ), AgentView.from_config(config)


def check_tracker(config: AgentConfig, timeout: float) -> list[Check]:
    if not config.p2p:
        return [Check("tracker", "OK", "peer-to-peer is off (--no-p2p): no tracker needed")]
    if not config.tracker and config.serve_tracker:
        return [
            Check(
                "tracker",
                "OK",
                f"this agent serves the fleet's tracker on {config.tracker_listen} "
                "(--serve-tracker): other agents use it with --tracker",
            )
        ]
    if not config.tracker:
        return [
            Check(
                "tracker",
                "WARN",
                "no --tracker: the agent runs an embedded tracker and shares layers with no "
                "other node",
                "for a fleet, set --tracker URL and --tracker-token-file FILE "
                "(LAYERSWARM_TRACKER, LAYERSWARM_TRACKER_TOKEN_FILE), or let one agent "
                "serve it to the others with --serve-tracker",
            )
        ]
    if config.tracker_token_file is None:
        return [
            Check(
                "tracker token",
                "FAIL",
                "--tracker is set but no --tracker-token-file",
                "give the file holding the fleet token (the tracker's --token-file)",
            )
        ]
    try:
        token = read_fleet_token(config.tracker_token_file, "tracker-token-file")
    except ConfigError as exc:
        return [Check("tracker token", "FAIL", str(exc), "fix the file's path or contents")]
    checks = []
    for url in config.tracker.split(","):
        name = f"tracker {url}"
        api = TrackerAPI([url], token, timeout)
        try:
            api.healthz()
        except TrackerUnreachable as exc:
            checks.append(
                Check(
                    name,
                    "FAIL",
                    f"not reachable ({exc}); pulls still work, from the upstream only",
                    "start the tracker or fix --tracker; check firewalls between node and tracker",
                )
            )
            continue
        except TrackerRefused as exc:
            fix = "check the tracker's Redis (--store)" if exc.status == 503 else "read its log"
            checks.append(Check(name, "FAIL", f"/healthz: HTTP {exc.status}: {exc.message}", fix))
            continue
        try:
            api.check_token()
        except TrackerRefused as exc:
            if exc.status == 401:
                checks.append(
                    Check(
                        name,
                        "FAIL",
                        f"refuses the token in {config.tracker_token_file} (HTTP 401)",
                        "use the same token file as the tracker's --token-file",
                    )
                )
            else:
                checks.append(Check(name, "FAIL", f"token check: {exc}", "read the tracker's log"))
            continue
        except TrackerUnreachable as exc:
            checks.append(Check(name, "FAIL", f"token check: {exc}", "retry; read its log"))
            continue
        checks.append(Check(name, "OK", "reachable, token accepted"))
    return checks


def check_region(view: AgentView, config: AgentConfig, timeout: float) -> list[Check]:
    """WARN when this agent has no region while live agents in the fleet have one.

    The tracker hands out one upstream lease per region and prefers a region's own peers; an
    agent without a region is a region of its own, so it fetches from the upstream layers its
    region already has. Needs the fleet view, so only with a tracker and a token.
    """
    if not view.p2p or view.region:
        return []
    urls = [u for u in config.tracker.split(",") if u] or view.tracker_urls
    token_path = config.tracker_token_file or (Path(view.token_file) if view.token_file else None)
    if not urls or token_path is None:
        return []
    try:
        fleet = TrackerAPI(
            urls, read_fleet_token(token_path, "tracker-token-file"), timeout
        ).fleet()
    except (ConfigError, TrackerRefused, TrackerUnreachable) as exc:
        return [
            Check(
                "region",
                "WARN",
                f"the agent has no --region, and the fleet view cannot be read to compare: {exc}",
                "see the tracker checks above",
            )
        ]
    agents = fleet.get("agents") or []
    regions = Counter(
        str(a["region"])
        for a in agents
        if isinstance(a, dict) and a.get("region") and a.get("agent_id") != view.agent_id
    )
    if not regions:
        return []
    seen = ", ".join(f"{r}: {n}" for r, n in regions.most_common())
    live = sum(regions.values())
    return [
        Check(
            "region",
            "WARN",
            f"the agent has no --region, while {live} live agent{'s' if live != 1 else ''} in "
            f"the fleet {'have' if live != 1 else 'has'} one ({seen}); it is a region of its "
            "own, so it fetches from the upstream layers its region already has",
            f"start the agent with --region REGION (LAYERSWARM_REGION), its peers' region: "
            f"--region {regions.most_common(1)[0][0]}",
        )
    ]


def checked_upstreams(config: AgentConfig) -> list[Upstream]:
    """Upstreams named in the configuration, and the default one; Docker Hub's implicit entry
    is checked only when it is the default (the agent does not use it otherwise)."""
    ups = {u.name: u for u in config.upstream}
    default = config.upstreams.get(config.default_upstream)
    if default is not None:
        ups.setdefault(default.name, default)
    return list(ups.values())


def check_upstreams(config: AgentConfig, timeout: float) -> list[Check]:
    checks = []
    for up in checked_upstreams(config):
        name = f"upstream {up.name}"
        try:
            resp = http_request(f"{up.url}/v2/", timeout=timeout, max_body=64 << 10)
        except OSError as exc:
            inner = getattr(exc, "reason", None)
            reason = classify(inner if isinstance(inner, BaseException) else exc).cause
            checks.append(
                Check(
                    name,
                    "FAIL",
                    f"{up.url}/v2/: no answer ({reason}); only cached images can be pulled",
                    f"check DNS, proxy and firewall from this node to {up.url}, or fix "
                    f"--upstream {up.name}=URL",
                )
            )
            continue
        if resp.status in (200, 401):
            checks.append(Check(name, "OK", f"{up.url}/v2/ answers {resp.status}"))
        else:
            checks.append(
                Check(
                    name,
                    "WARN",
                    f"{up.url}/v2/ answered HTTP {resp.status}, not a registry's 200 or 401",
                    f"is {up.url} the registry's API address?",
                )
            )
    return checks


def check_disk(config: AgentConfig, health: dict[str, Any] | None) -> Check:
    name = "disk"
    limit = config.cache_size
    used = 0
    if health and isinstance(health.get("disk_free_bytes"), int):
        free = int(health["disk_free_bytes"])
        used = int(health.get("cache_bytes", 0))
        limit = int(health.get("cache_limit_bytes", limit))
        where = "the agent's data dir"
        total = None
        with contextlib.suppress(OSError):
            total = shutil.disk_usage(config.data_dir).total
    else:
        try:
            usage = shutil.disk_usage(config.data_dir)
        except OSError as exc:
            return Check(
                name,
                "WARN",
                f"cannot read {config.data_dir}: {exc.strerror}",
                "give the agent's --data-dir (or --config) so doctor checks the right disk",
            )
        free, total, where = usage.free, usage.total, str(config.data_dir)
    detail = f"{where}: {human_bytes(free)} free; cache {human_bytes(used)} of {human_bytes(limit)}"
    if total and free < LOW_DISK_FRACTION * total:
        return Check(
            name,
            "WARN",
            f"{detail}; under {LOW_DISK_FRACTION:.0%} of the disk is free",
            "free space on that filesystem or lower --cache-size",
        )
    if free + used < limit:
        return Check(
            name,
            "WARN",
            f"{detail}; the cache cannot grow to its limit (needs "
            f"{human_bytes(limit - used - free)} more)",
            f"lower --cache-size to at most {human_bytes(free + used)} or free space",
        )
    return Check(name, "OK", detail)


# -- runtime configuration -----------------------------------------------------------------------


def docker_host(arg: str | None) -> str | None:
    if arg == "none":
        return None
    if arg:
        return arg
    env = os.environ.get("DOCKER_HOST")
    if env:
        return env
    for sock in DEFAULT_DOCKER_SOCKETS:
        if Path(sock).exists():
            return f"unix://{sock}"
    return None


def mirrors_from_info(info: dict[str, Any]) -> dict[str, list[str]]:
    """registry -> mirrors, from a Docker ``/info`` answer.

    dockerd lists registry-mirrors at the top (they apply to Docker Hub); podman's API lists
    each registry's mirrors under ``IndexConfigs``.
    """
    rc = info.get("RegistryConfig") or {}
    out: dict[str, list[str]] = {}
    top = rc.get("Mirrors") or []
    if top:
        out["docker.io"] = [str(m) for m in top]
    for name, index in (rc.get("IndexConfigs") or {}).items():
        mirrors = [str(m) for m in (index or {}).get("Mirrors") or []]
        if mirrors:
            key = "docker.io" if name in ("docker.io", "index.docker.io") else str(name)
            out[key] = list(dict.fromkeys([*out.get(key, []), *mirrors]))
    return out


@dataclass(frozen=True)
class MirrorUse:
    """A runtime config entry that sends pulls of ``registry`` to the agent.

    ``asks_for`` is the upstream the agent is asked for: containerd names it in ``?ns=``,
    podman/CRI-O in the mirror location's path prefix; None when the request names no registry
    (Docker's registry-mirrors, a location without a prefix), so the default upstream answers.
    """

    runtime: Literal["docker", "containerd", "podman"]
    where: str  # the file or API, for the report
    registry: str
    asks_for: str | None


def mirror_path_prefix(mirror: str) -> str | None:
    """The registry a mirror location names as its path prefix (``node:5050/ghcr.io``,
    ``node:5050/127.0.0.1_5000``), or None for a location without a path."""
    rest = mirror.split("://", 1)[1] if "://" in mirror else mirror
    first = rest.partition("/")[2].strip("/").split("/")[0]
    return registry_from_prefix(first) if first else None


def uses_from_info(
    mirrors: dict[str, list[str]], agent_url: str, where: str, runtime: Literal["docker", "podman"]
) -> list[MirrorUse]:
    return [
        MirrorUse(runtime, where, registry, mirror_path_prefix(m))
        for registry, ms in sorted(mirrors.items())
        for m in ms
        if same_endpoint(m, agent_url)
    ]


def check_runtime_api(
    base_url: str, agent_url: str, timeout: float
) -> tuple[Check, list[MirrorUse]] | None:
    """The check from a Docker-compatible API and what it sends to the agent, or None when
    none answers (files decide)."""
    import docker as docker_sdk  # noqa: PLC0415  # only doctor needs it, and only here

    try:
        client = docker_sdk.DockerClient(base_url=base_url, timeout=max(1, int(timeout)))
        try:
            info = client.info()
        finally:
            client.close()
    except Exception:  # any failure means "no API here": the config files decide
        return None
    mirrors = mirrors_from_info(info if isinstance(info, dict) else {})
    ours = sorted(r for r, ms in mirrors.items() if any(same_endpoint(m, agent_url) for m in ms))
    engine: Literal["docker", "podman"] = (
        "podman" if "podman" in json.dumps(info.get("Name", "")).lower() else "docker"
    )
    uses = uses_from_info(mirrors, agent_url, f"the container API at {base_url}", engine)
    if ours:
        return Check(
            "runtime",
            "OK",
            f"the container API at {base_url} pulls {', '.join(ours)} through {agent_url}",
        ), uses
    seen = "; ".join(f"{r}: {', '.join(ms)}" for r, ms in sorted(mirrors.items())) or "none"
    return Check(
        "runtime",
        "FAIL",
        f"the container API at {base_url} does not use the mirror {agent_url} "
        f"(its mirrors: {seen})",
        f"`layerswarm configure docker --mirror {agent_url}` then `systemctl reload docker`"
        if engine == "docker"
        else f"`layerswarm configure podman --mirror {agent_url} --registry NAME`, then restart "
        "the podman service",
    ), uses


def _read(path: Path, fmt: Literal["json", "toml"]) -> tuple[dict[str, Any] | None, str | None]:
    """(data, None), (None, None) when absent, or (None, error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path}: cannot read ({exc})"
    try:
        data = (json.loads(text) if text.strip() else {}) if fmt == "json" else tomllib.loads(text)
    except ValueError as exc:
        return None, f"{path}: not valid {fmt.upper()} ({exc})"
    if not isinstance(data, dict):
        return None, f"{path}: top level is not an object"
    return data, None


def _certs_dirs(certs_dir: Path) -> Iterator[Path]:
    try:
        yield from sorted(p for p in certs_dir.iterdir() if (p / "hosts.toml").is_file())
    except OSError:
        return


@dataclass
class FileFindings:
    pointed: list[str]  # "docker (daemon.json): docker.io"
    present: list[str]  # files read that do not point at the agent
    errors: list[str]
    uses: list[MirrorUse] = field(default_factory=list)


def scan_runtime_files(
    agent_url: str, daemon_json: Path, certs_dir: Path, registries_conf: Path
) -> FileFindings:
    found = FileFindings([], [], [])
    _scan_docker(found, agent_url, daemon_json)
    _scan_containerd(found, agent_url, certs_dir)
    _scan_podman(found, agent_url, registries_conf)
    return found


def _scan_docker(found: FileFindings, agent_url: str, daemon_json: Path) -> None:
    data, err = _read(daemon_json, "json")
    if err:
        found.errors.append(err)
    elif data is not None:
        mirrors = data.get("registry-mirrors") or []
        if isinstance(mirrors, list) and any(same_endpoint(str(m), agent_url) for m in mirrors):
            found.pointed.append(f"docker ({daemon_json}): docker.io")
            # Docker applies registry-mirrors to Docker Hub only, and names no registry.
            found.uses.append(MirrorUse("docker", str(daemon_json), "docker.io", None))
        else:
            found.present.append(f"{daemon_json} (registry-mirrors: {mirrors or 'none'})")


def _scan_containerd(found: FileFindings, agent_url: str, certs_dir: Path) -> None:
    for d in _certs_dirs(certs_dir):
        path = d / "hosts.toml"
        data, err = _read(path, "toml")
        if err:
            found.errors.append(err)
            continue
        assert data is not None
        hosts = data.get("host") or {}
        if isinstance(hosts, dict) and any(same_endpoint(str(h), agent_url) for h in hosts):
            registry = "every registry" if d.name == containerd.DEFAULT_HOST_DIR else d.name
            found.pointed.append(f"containerd ({path}): {registry}")
            if d.name != containerd.DEFAULT_HOST_DIR:
                # containerd names the registry in ?ns=, the directory's name. `_default`
                # sends every registry, and those the agent lacks fall through to the next
                # host, so only named directories can be checked against its upstreams.
                found.uses.append(MirrorUse("containerd", str(path), d.name, d.name))
        else:
            found.present.append(str(path))


def _scan_podman(found: FileFindings, agent_url: str, registries_conf: Path) -> None:
    data, err = _read(registries_conf, "toml")
    if err:
        found.errors.append(err)
        return
    if data is None:
        return
    names = []
    for entry in data.get("registry") or []:
        if not isinstance(entry, dict):
            continue
        mirrors = entry.get("mirror") or []
        ours = [
            str(m.get("location", ""))
            for m in mirrors
            if isinstance(m, dict) and same_endpoint(str(m.get("location", "")), agent_url)
        ]
        if ours:
            name = str(entry.get("prefix") or entry.get("location") or "?")
            names.append(name)
            # A prefix may name a namespace too (docker.io/library); the host comes first.
            registry = name.split("/", 1)[0]
            found.uses.extend(
                MirrorUse("podman", str(registries_conf), registry, mirror_path_prefix(loc))
                for loc in ours
            )
    if names:
        found.pointed.append(f"podman/CRI-O ({registries_conf}): {', '.join(names)}")
    else:
        found.present.append(str(registries_conf))


def check_runtime_files(
    agent_url: str, daemon_json: Path, certs_dir: Path, registries_conf: Path
) -> tuple[list[Check], list[MirrorUse]]:
    found = scan_runtime_files(agent_url, daemon_json, certs_dir, registries_conf)
    checks = [
        Check("runtime config", "FAIL", e, "fix or move the file away; runtimes will not start")
        for e in found.errors
    ]
    if found.pointed:
        checks.append(
            Check("runtime config", "OK", "pointing at the agent: " + "; ".join(found.pointed))
        )
    else:
        where = ", ".join(found.present) if found.present else "none of the runtime files exist"
        checks.append(
            Check(
                "runtime config",
                "FAIL",
                f"no runtime is configured to pull through {agent_url} ({where})",
                f"`layerswarm configure docker|containerd|podman --mirror {agent_url}`",
            )
        )
    return checks, found.uses


def check_mirror_upstreams(uses: list[MirrorUse], view: AgentView, agent_url: str) -> list[Check]:
    """Each registry a runtime sends to the agent must be one the agent mirrors, and answered
    by that registry: otherwise the agent refuses it (the runtime quietly pulls direct, or
    fails with no route out) or serves it from another registry."""
    name = "runtime upstreams"
    mirrored = sorted(view.upstreams)
    whose = "the agent" if view.described else "the agent (as doctor's flags describe it)"
    checks: list[Check] = []
    fine: list[str] = []
    for use in uses:
        registry = canonical_registry(use.registry)
        if registry.startswith("*"):
            continue  # a wildcard prefix names no one registry to compare
        if use.asks_for is not None:
            target = canonical_registry(use.asks_for)
            if target not in view.upstreams:
                checks.append(
                    Check(
                        name,
                        "FAIL",
                        f"{use.where} sends {registry} pulls to {whose}, which does not mirror "
                        f"{target} (it mirrors {', '.join(mirrored)}): they bypass the mirror "
                        "or fail",
                        f"start the agent with --upstream {target}=https://{target} (or that "
                        f"registry's own URL; LAYERSWARM_UPSTREAM), or take {registry} out of "
                        f"{use.where}",
                    )
                )
                continue
        else:
            target = canonical_registry(view.default_upstream)
        if target == registry:
            fine.append(registry)
            continue
        url = view.upstreams.get(target, "?")
        if use.asks_for is not None:
            detail = f"{use.where} sends {registry} pulls to {whose} as {target} ({url})"
            fix = f"`layerswarm configure {use.runtime} --mirror {agent_url} --registry {registry}`"
        elif use.runtime == "docker":
            detail = (
                f"{use.where} sends {registry} pulls to {whose} without naming the registry, "
                f"so its default upstream {target} ({url}) answers them, not {registry}"
            )
            fix = (
                f"start the agent with --default-upstream {registry}; or, if {url} stands in for "
                f"{registry} on purpose, name it so: --upstream {registry}={url}"
            )
        else:
            detail = (
                f"{use.where}: the mirror for {registry} has no registry path prefix, so "
                f"{whose} answers {registry} pulls from its default upstream {target} ({url})"
            )
            fix = f"`layerswarm configure podman --mirror {agent_url} --registry {registry}`"
        checks.append(Check(name, "WARN", detail, fix))
    if fine:
        regs = ", ".join(dict.fromkeys(fine))
        checks.insert(0, Check(name, "OK", f"{whose} mirrors what the runtime sends it: {regs}"))
    return checks


# -- the command ---------------------------------------------------------------------------------


def run_checks(config: AgentConfig, args: argparse.Namespace, timeout: float) -> list[Check]:
    agent_url = (args.agent or agent_url_from(config.listen)).rstrip("/")
    # Asked first, reported second: the tracker-link check names the agent's own token file.
    config_check, view = check_agent_config(agent_url, config, timeout)
    checks, health = check_agent(agent_url, timeout, view.token_file)
    if health is not None or config_check.level == "OK":
        # When the agent does not answer at all, its FAIL says so; a WARN here adds nothing.
        checks.append(config_check)
    checks += check_tracker(config, timeout)
    checks += check_region(view, config, timeout)
    checks += check_upstreams(config, timeout)
    checks.append(check_disk(config, health))
    host = docker_host(args.docker_host)
    api = check_runtime_api(host, agent_url, timeout) if host else None
    if api is not None:
        api_check, uses = api
        checks.append(api_check)
    else:
        if args.docker_host and args.docker_host != "none":
            checks.append(
                Check(
                    "runtime",
                    "WARN",
                    f"no Docker-compatible API answers at {args.docker_host}; reading config "
                    "files instead",
                    "check --docker-host (unix:///var/run/docker.sock for dockerd)",
                )
            )
        file_checks, uses = check_runtime_files(
            agent_url, args.daemon_json, args.certs_dir, args.registries_conf
        )
        checks += file_checks
    checks += check_mirror_upstreams(uses, view, agent_url)
    return checks


def run(args: argparse.Namespace) -> int:
    timeout = parse_duration(str(args.timeout))
    if not 0 < timeout <= 60:
        raise ConfigError("timeout must be between 0 and 60 seconds")
    config = settings.load(AgentConfig, args)
    checks = run_checks(config, args, timeout)
    for check in checks:
        sys.stdout.write("\n".join(check.lines()) + "\n")
    failed = sum(1 for c in checks if c.level == "FAIL")
    warned = sum(1 for c in checks if c.level == "WARN")
    sys.stdout.write(f"\n{len(checks)} checks: {failed} failed, {warned} warnings\n")
    return 1 if failed else 0
