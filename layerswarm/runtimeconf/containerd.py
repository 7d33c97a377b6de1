"""containerd: ``certs.d/<registry>/hosts.toml`` per registry, ``_default`` for all of them.

containerd tries the ``[host."..."]`` entries in file order and falls back to ``server``; it
appends ``?ns=<registry>`` to each mirror request, which is how one agent serves many
registries. CRI reads certs.d only when its registry ``config_path`` names the directory,
so ``config_path_warnings`` checks containerd's own config too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerswarm.runtimeconf.address import MirrorAddress
from layerswarm.runtimeconf.files import ConfigureError

DEFAULT_CERTS_DIR = "/etc/containerd/certs.d"
DEFAULT_CONTAINERD_CONFIG = "/etc/containerd/config.toml"
DEFAULT_HOST_DIR = "_default"
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
CAPABILITIES = ["pull", "resolve"]

# Where CRI's registry settings live: containerd 1.x config version 2, then 2.x version 3.
_CRI_REGISTRY_PLUGINS = ("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images")


def hosts_toml_path(certs_dir: Path, registry: str) -> Path:
    return certs_dir / registry / "hosts.toml"


def default_server(registry: str) -> str | None:
    if registry == DEFAULT_HOST_DIR:
        # Without `server`, containerd falls back to the registry the image is named after.
        return None
    if registry == DOCKER_HUB:
        return DOCKER_HUB_SERVER
    return f"https://{registry}"


def desired_hosts_toml(
    current: dict[str, Any], registry: str, mirror: MirrorAddress
) -> dict[str, Any]:
    """``current`` with our mirror as the first host; the operator's server and hosts kept."""
    hosts = current.get("host", {})
    if not isinstance(hosts, dict):
        raise ConfigureError(f"hosts.toml for {registry}: 'host' is not a table")
    ours = dict(hosts.get(mirror.url, {}))
    caps = ours.get("capabilities", [])
    if not isinstance(caps, list):
        raise ConfigureError(f"hosts.toml for {registry}: capabilities is not a list")
    ours["capabilities"] = [*caps, *(c for c in CAPABILITIES if c not in caps)]

    out: dict[str, Any] = {}
    server = current.get("server", default_server(registry))
    if server is not None:
        out["server"] = server
    out.update((k, v) for k, v in current.items() if k not in ("server", "host"))
    out["host"] = {mirror.url: ours, **{k: v for k, v in hosts.items() if k != mirror.url}}
    return out


def _cri_registry(config: dict[str, Any]) -> dict[str, Any] | None:
    plugins = config.get("plugins", {})
    if not isinstance(plugins, dict):
        return None
    for name in _CRI_REGISTRY_PLUGINS:
        plugin = plugins.get(name)
        if isinstance(plugin, dict) and isinstance(plugin.get("registry"), dict):
            registry: dict[str, Any] = plugin["registry"]
            return registry
    return None


def config_path_warnings(
    config: dict[str, Any] | None, config_file: Path, certs_dir: Path
) -> list[str]:
    """What the operator must still change in containerd's config for certs.d to be read."""
    snippet = (
        f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{certs_dir}"\n'
        f"(containerd 2.x, config version 3: "
        f'[plugins."io.containerd.cri.v1.images".registry])'
    )
    if config is None:
        return [
            f"no containerd config at {config_file}: CRI pulls read {certs_dir} only once "
            f"`containerd config default > {config_file}` is edited to set\n{snippet}\n"
            f"(ctr reads it with `ctr images pull --hosts-dir {certs_dir}`)"
        ]
    registry = _cri_registry(config)
    config_path = registry.get("config_path") if registry else None
    warnings = []
    if not config_path:
        warnings.append(f"{config_file} does not set the CRI registry config_path; add\n{snippet}")
    elif str(certs_dir) not in str(config_path).split(":"):
        warnings.append(
            f"{config_file} sets config_path = {config_path!r}, which does not include "
            f"{certs_dir}: containerd will not read the files just written"
        )
    if registry and registry.get("mirrors"):
        warnings.append(
            f"{config_file} still has the deprecated registry.mirrors table; remove it, "
            "containerd does not combine it with config_path"
        )
    return warnings
