"""Turn a frozen config dataclass into flags, ``LAYERSWARM_*`` env vars and YAML keys.

Each component owns its config dataclass (``agent.config.AgentConfig``,
``tracker.config.TrackerConfig``); this module only knows how to fill one in. A field
becomes a setting when it carries ``setting(...)`` metadata:

    listen: str = field(default="127.0.0.1:5050", metadata=setting("HOST:PORT to serve on"))

Precedence is flag > environment > config file > default, and everything is validated
once, at start-up, by the dataclass's ``__post_init__`` (which raises ``ConfigError``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

ENV_PREFIX = "LAYERSWARM_"


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message is one line for operators."""


@dataclasses.dataclass(frozen=True)
class Setting:
    help: str
    parse: Callable[[str], Any] | None = None
    repeatable: bool = False
    metavar: str | None = None


def setting(
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    repeatable: bool = False,
    metavar: str | None = None,
) -> dict[str, Setting]:
    return {"setting": Setting(help=help, parse=parse, repeatable=repeatable, metavar=metavar)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def settings_of(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Setting]]:
    out = []
    for f in dataclasses.fields(cls):
        s = f.metadata.get("setting")
        if isinstance(s, Setting):
            out.append((f, s))
    return out


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"YAML config file (env {ENV_PREFIX}CONFIG)"
    )
    for f, s in settings_of(cls):
        default = _default_of(f)
        shown = "" if default in (None, (), [], "") else f" (default: {_show(default)})"
        help_text = f"{s.help}{shown} [env {env_name(f.name)}]"
        if f.type in ("bool", bool) and not s.parse:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        elif s.repeatable:
            parser.add_argument(
                _flag(f.name),
                dest=f.name,
                action="append",
                default=None,
                metavar=s.metavar,
                help=help_text + "; repeatable",
            )
        else:
            parser.add_argument(
                _flag(f.name), dest=f.name, default=None, metavar=s.metavar, help=help_text
            )


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(raw: str, name: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def _convert(f: dataclasses.Field[Any], s: Setting, raw: Any, origin: str) -> Any:
    """Convert a raw value (str from flag/env, any YAML scalar or list) to the field's type."""
    label = f"{origin} {f.name.replace('_', '-')}"
    if s.repeatable:
        items: list[Any]
        if isinstance(raw, str):
            items = [p for p in (x.strip() for x in raw.split(",")) if p]
        elif isinstance(raw, Mapping):
            items = [f"{k}={v}" for k, v in raw.items()]
        elif isinstance(raw, list | tuple):
            items = list(raw)
        else:
            raise ConfigError(f"{label}: expected a list, got {type(raw).__name__}")
        return tuple(_convert_one(s, item, label) for item in items)
    if f.type in ("bool", bool) and not s.parse:
        if isinstance(raw, bool):
            return raw
        return _parse_bool(str(raw), label)
    return _convert_one(s, raw, label, f.type)


def _convert_one(s: Setting, raw: Any, label: str, ftype: Any = None) -> Any:
    try:
        if s.parse is not None:
            return s.parse(str(raw) if not isinstance(raw, str) else raw)
        if ftype in ("int", int):
            return int(raw)
        if ftype in ("float", float):
            return float(raw)
        return str(raw)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


T = TypeVar("T")


def load(
    cls: type[T],
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from parsed flags, the environment and an optional YAML file."""
    env = os.environ if environ is None else environ
    known = {f.name: (f, s) for f, s in settings_of(cls)}
    values: dict[str, Any] = {}

    config_path = getattr(args, "config", None) or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for key, raw in _read_yaml(Path(config_path)).items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"config file {config_path}: unknown setting {key!r}")
            f, s = known[name]
            values[name] = _convert(f, s, raw, f"config file {config_path}:")

    for name, (f, s) in known.items():
        raw_env = env.get(env_name(name))
        if raw_env is not None:
            values[name] = _convert(f, s, raw_env, env_name(name) + ":")

    for name, (f, s) in known.items():
        raw_flag = getattr(args, name, None)
        if raw_flag is None:
            continue
        if s.repeatable:
            values[name] = tuple(v for item in raw_flag for v in _convert(f, s, item, _flag(name)))
        else:
            values[name] = _convert(f, s, raw_flag, _flag(name))

    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings")
    return data


# Shared parsers used by several components' settings.

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(raw: str) -> int:
    """Parse ``10G``, ``512MiB``, ``1.5GB`` or a plain byte count (binary units throughout)."""
    m = _SIZE.match(raw)
    if not m:
        raise ConfigError(f"not a size: {raw!r} (try 10G or 512M)")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    if unit not in _UNITS:
        raise ConfigError(f"not a size: {raw!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_duration(raw: str) -> float:
    """Parse ``30s``, ``5m``, ``250ms``, ``1h`` or plain seconds."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", raw)
    if not m:
        raise ConfigError(f"not a duration: {raw!r} (try 30s or 5m)")
    mult = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * mult


def parse_hostport(raw: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); the port may be 0 for "any free port"."""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"expected HOST:PORT, got {raw!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    p = int(port)
    if p > 65535:
        raise ConfigError(f"port out of range in {raw!r}")
    return host, p


def parse_url_list(raw: str) -> str:
    """Comma-separated ``http(s)://host[:port]`` URLs (tracker replicas), normalised."""
    urls = [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"tracker URL must be http(s)://host:port, got {url!r}")
    return ",".join(urls)


def describe(cls: type[Any]) -> Sequence[tuple[str, str, str, str]]:
    """(flag, env var, default, help) for each setting: the source of docs/configuration.md."""
    rows = []
    for f, s in settings_of(cls):
        default = _default_of(f)
        rows.append(
            (
                _flag(f.name) + (f" {s.metavar}" if s.metavar else ""),
                env_name(f.name),
                "" if default in (None, (), []) else _show(default),
                s.help + (" (repeatable)" if s.repeatable else ""),
            )
        )
    return rows
