"""Serialize plain data (what ``tomllib`` returns) back to TOML.

Only what runtime config files use: strings, booleans, integers, floats, arrays, tables and
arrays of tables. Dates and times are refused rather than guessed at. Comments in a file we
rewrite are lost, which is why every rewrite keeps a backup.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class TomlWriteError(ValueError):
    """A value has no TOML form this writer knows."""


def dumps(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _table(lines, (), data, header=None)
    return "\n".join(lines).strip("\n") + "\n"


def key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _string(name)


def _string(value: str) -> str:
    # A JSON string is a valid TOML basic string: both use the same backslash escapes
    # (\" \\ \b \f \n \r \t \uXXXX) and ensure_ascii=False keeps non-ASCII text readable.
    return json.dumps(value, ensure_ascii=False)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, Mapping) for v in value)


def _table(
    lines: list[str],
    path: tuple[str, ...],
    table: Mapping[str, Any],
    header: str | None,
    header_required: bool = False,
) -> None:
    scalars = {
        k: v for k, v in table.items() if not isinstance(v, Mapping) and not _is_table_array(v)
    }
    # A table holding only sub-tables needs no header of its own ("[host]" before
    # '[host."http://..."]' is noise); an array-of-tables element always does.
    only_subtables = not scalars and len(table) > 0 and not header_required
    if header is not None and not only_subtables:
        if lines:
            lines.append("")
        lines.append(header)
    for k, v in scalars.items():
        lines.append(f"{key(k)} = {_value(v)}")
    for k, v in table.items():
        sub = (*path, k)
        dotted = ".".join(key(p) for p in sub)
        if isinstance(v, Mapping):
            _table(lines, sub, v, header=f"[{dotted}]")
        elif _is_table_array(v):
            for item in v:
                _table(lines, sub, item, header=f"[[{dotted}]]", header_required=True)


def _value(value: Any) -> str:
    # bool before int: bool is a subclass of int.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{key(k)} = {_value(v)}" for k, v in value.items())
        return "{" + inner + "}" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TomlWriteError(f"cannot write {type(value).__name__} values as TOML")
