"""podman, CRI-O, skopeo, buildah: a containers-registries.conf(5) v2 drop-in.

A drop-in in /etc/containers/registries.conf.d/ leaves the distribution's registries.conf
alone. Note that a drop-in's ``[[registry]]`` with the same prefix replaces the main file's
entry for that prefix as a whole, so we carry nothing over from it but what we write.
"""

from __future__ import annotations

from typing import Any

from agent.config import mirror_prefix
from layerswarm.runtimeconf.address import MirrorAddress
from layerswarm.runtimeconf.files import ConfigureError

DEFAULT_REGISTRIES_CONF = "/etc/containers/registries.conf.d/50-layerswarm.conf"

# Keys of the v1 format, which cannot be mixed with [[registry]] tables in one file.
_V1_KEYS = ("registries",)


def _registry_name(entry: dict[str, Any]) -> str | None:
    name = entry.get("prefix") or entry.get("location")
    return name if isinstance(name, str) else None


def desired_registries_conf(
    current: dict[str, Any], registries: list[str], mirror: MirrorAddress
) -> dict[str, Any]:
    """``current`` with our mirror first for each of ``registries``; all else kept."""
    for k in _V1_KEYS:
        if k in current:
            raise ConfigureError(
                f"registries.conf: has the v1 [{k}.*] tables; layerswarm writes the v2 "
                "format only, use a separate drop-in file (--registries-conf)"
            )
    entries = current.get("registry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigureError("registries.conf: 'registry' is not an array of tables")
    entries = [dict(e) for e in entries]
    for registry in registries:
        entry = next((e for e in entries if _registry_name(e) == registry), None)
        if entry is None:
            entry = {"prefix": registry, "location": registry}
            entries.append(entry)
        mirrors = entry.get("mirror", [])
        if not isinstance(mirrors, list) or not all(isinstance(m, dict) for m in mirrors):
            raise ConfigureError(f"registries.conf: {registry}: 'mirror' is not an array")
        # These clients send no ?ns=, so the mirror location carries the registry as a path
        # prefix ("node:5050/ghcr.io", a port as "_5000": references allow no colon there);
        # the agent routes on it (agent.server.registry._upstream_for).
        location = f"{mirror.netloc}/{mirror_prefix(registry)}"
        mine = (mirror.netloc, location)
        before: dict[str, Any] = next((m for m in mirrors if m.get("location") in mine), {})
        # Keep the operator's extra keys on our mirror (e.g. pull-from-mirror = "digest-only").
        ours = {**before, "location": location, "insecure": mirror.plain_http}
        others = [m for m in mirrors if m.get("location") not in mine]
        entry["mirror"] = [ours, *others]
    out = dict(current)
    out["registry"] = entries
    return out
