"""``layerswarm configure docker|containerd|podman``: point a runtime at the local agent.

Every file is parsed before anything is written (a file that does not parse is refused and
left as it is), changes are computed for all files first and written only if all of them
could be, each existing file is backed up once per actual change, and a second run reports
"already configured" and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import valid_registry_name
from layerswarm.runtimeconf import containerd, docker, files, podman
from layerswarm.runtimeconf.address import DEFAULT_MIRROR, MirrorAddress, parse_address
from layerswarm.runtimeconf.files import ConfigureError, FileChange
from layerswarm.runtimeconf.paths import add_path_arguments

DOCKER_HUB = "docker.io"


class UsageError(ConfigureError):
    """The options asked for something the runtime can't do; exit status 2."""


@dataclass
class Plan:
    """What a runtime needs: file changes (None = already right) and what to tell the operator."""

    paths: list[Path] = field(default_factory=list)
    changes: list[FileChange | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, path: Path, change: FileChange | None) -> None:
        self.paths.append(path)
        self.changes.append(change)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runtime", choices=("docker", "containerd", "podman"))
    parser.add_argument(
        "--mirror",
        default=DEFAULT_MIRROR,
        metavar="URL",
        help=f"the agent's registry address (default: {DEFAULT_MIRROR})",
    )
    parser.add_argument(
        "--registry",
        action="append",
        default=None,
        metavar="NAME",
        help="registry to mirror, as images name it (default: docker.io); repeatable; "
        "docker can mirror docker.io only",
    )
    parser.add_argument(
        "--default",
        action="store_true",
        help="containerd: also write certs.d/_default/hosts.toml, the mirror for every registry",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print a unified diff of each change, write nothing"
    )
    parser.add_argument(
        "--no-backup",
        action="store_true",
        help=f"do not keep FILE{files.BACKUP_INFIX}<timestamp> before changing FILE",
    )
    add_path_arguments(parser)
    parser.add_argument(
        "--containerd-config",
        type=Path,
        default=Path(containerd.DEFAULT_CONTAINERD_CONFIG),
        metavar="PATH",
        help="containerd's config, only read to check config_path "
        f"(default: {containerd.DEFAULT_CONTAINERD_CONFIG})",
    )


def _registries(args: argparse.Namespace) -> list[str]:
    names: list[str] = list(dict.fromkeys(args.registry or [DOCKER_HUB]))
    for name in names:
        if not valid_registry_name(name):
            raise UsageError(f"--registry {name!r} is not a registry HOST[:PORT]")
    return names


def plan_docker(args: argparse.Namespace, mirror: MirrorAddress) -> Plan:
    registries = _registries(args)
    if registries != [DOCKER_HUB]:
        raise UsageError(
            "docker's registry-mirrors applies to docker.io only; use containerd or podman "
            "to mirror " + ", ".join(r for r in registries if r != DOCKER_HUB)
        )
    if args.default:
        raise UsageError("--default is for containerd only")
    plan = Plan()
    current = files.read_config(args.daemon_json, "json")
    desired = docker.desired_daemon_json(current.data, mirror)
    plan.add(args.daemon_json, files.plan(current, desired, "json"))
    plan.notes.append(
        "next: `systemctl reload docker` (registry-mirrors is reloaded on SIGHUP); "
        "check with `docker info --format '{{.RegistryConfig.Mirrors}}'`"
    )
    return plan


def plan_containerd(args: argparse.Namespace, mirror: MirrorAddress) -> Plan:
    registries = _registries(args)
    if args.default:
        registries.append(containerd.DEFAULT_HOST_DIR)
    plan = Plan()
    for registry in registries:
        path = containerd.hosts_toml_path(args.certs_dir, registry)
        current = files.read_config(path, "toml")
        desired = containerd.desired_hosts_toml(current.data, registry, mirror)
        plan.add(path, files.plan(current, desired, "toml"))

    config_file: Path = args.containerd_config
    try:
        config = files.read_config(config_file, "toml")
    except ConfigureError as exc:
        plan.warnings.append(f"cannot check config_path: {exc}")
    else:
        plan.warnings.extend(
            containerd.config_path_warnings(
                config.data if config.text is not None else None, config_file, args.certs_dir
            )
        )
    extra = [r for r in registries if r not in (DOCKER_HUB, containerd.DEFAULT_HOST_DIR)]
    if extra:
        plan.notes.append(
            "the agent must know each upstream: --upstream "
            + " --upstream ".join(f"{r}=https://{r}" for r in extra)
            + " (or LAYERSWARM_UPSTREAM)"
        )
    plan.notes.append(
        "next: hosts.toml is read on every pull, nothing to restart; only a config_path change "
        "needs `systemctl restart containerd`"
    )
    return plan


def plan_podman(args: argparse.Namespace, mirror: MirrorAddress) -> Plan:
    registries = _registries(args)
    if args.default:
        raise UsageError("--default is for containerd only; name each --registry for podman")
    plan = Plan()
    path: Path = args.registries_conf
    current = files.read_config(path, "toml")
    desired = podman.desired_registries_conf(current.data, registries, mirror)
    plan.add(path, files.plan(current, desired, "toml"))
    others = [r for r in registries if r != DOCKER_HUB]
    if others:
        plan.warnings.append(
            f"the agent must mirror {', '.join(others)}: start it with --upstream NAME=URL "
            "for each (the mirror location carries the registry name as a path prefix)"
        )
    plan.notes.append(
        "next: podman and skopeo read it on their next pull; CRI-O: `systemctl reload crio`; "
        "check with `podman info --format '{{.Registries}}'`"
    )
    return plan


_PLANNERS = {"docker": plan_docker, "containerd": plan_containerd, "podman": plan_podman}


def run(args: argparse.Namespace) -> int:
    try:
        mirror = parse_address(args.mirror)
        # Everything is read and checked before anything is written.
        plan = _PLANNERS[args.runtime](args, mirror)
    except UsageError as exc:
        print(f"layerswarm configure: {exc}", file=sys.stderr)
        return 2
    except ConfigureError as exc:
        print(f"layerswarm configure: {exc}", file=sys.stderr)
        return 1

    changed = 0
    for path, change in zip(plan.paths, plan.changes, strict=True):
        if change is None:
            print(f"{path}: already configured for {mirror.url}, nothing changed")
            continue
        changed += 1
        if args.dry_run:
            sys.stdout.write(change.diff())
            continue
        try:
            saved = files.apply(change, backup=not args.no_backup)
        except (ConfigureError, OSError) as exc:
            print(f"layerswarm configure: {path}: {exc}", file=sys.stderr)
            return 1
        how = "created" if change.old_text is None else "updated"
        print(f"{path}: {how}" + (f" (backup: {saved})" if saved else ""))

    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(f"dry run: {changed} file(s) would change, nothing written")
    elif changed:
        for note in plan.notes:
            print(note)
    return 0
