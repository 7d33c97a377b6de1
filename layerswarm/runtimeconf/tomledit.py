"""Edit a TOML file the way its operator wrote it: only the values that must change change.

The runtime modules compute the data a file should hold (plain dicts, as ``tomllib`` reads
them); ``edit`` walks the file's tomlkit document towards that data. A value already equal
is left as written (quoting, spacing, the comment after it); keys, tables and array-of-table
entries the data no longer has are removed; new ones are added; and where the order matters
(containerd tries ``[host."..."]`` entries in file order) entries are moved, each with its
own comments. An entry of an array of tables is recognised by what identifies it in runtime
configs (``prefix``, ``location``, ``name``), so a comment stays with the entry it was
written for when ours is put in front of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import tomlkit
from tomlkit.items import AoT, InlineTable, Table
from tomlkit.toml_document import TOMLDocument

# The keys that identify an entry of an array of tables in registries.conf-style files.
_IDENTITY_KEYS = ("prefix", "location", "name")


def edit(text: str | None, desired: Mapping[str, Any]) -> str:
    """``text`` (None: a new file) changed to hold exactly ``desired``."""
    doc = tomlkit.parse(text or "")
    _merge(doc, desired)
    out = tomlkit.dumps(doc)
    if text is None:
        return out
    out = _keep_comments_with_their_tables(text, out)
    if "\n\n\n" not in text:
        # tomlkit puts a blank line before a table it adds even after one already there;
        # the operator's file had no double blank lines, so the edit adds none either.
        out = re.sub(r"\n{3,}", "\n\n", out)
    return out


def _is_header(line: str) -> bool:
    return line.lstrip().startswith("[")


def _keep_comments_with_their_tables(old: str, new: str) -> str:
    """Move each comment block written just above a table back above that table.

    TOML does not attach comments to tables: tomlkit keeps a comment above ``[[x]]`` as the
    end of whatever came before, so a table added in front of ``[[x]]`` lands under it and the
    comment would describe ours. A table is recognised by its header and its first line.
    """
    old_lines = old.splitlines()
    lines = new.splitlines()
    for i, line in enumerate(old_lines):
        if not _is_header(line) or i == 0:
            continue
        start = i
        while start > 0 and old_lines[start - 1].lstrip().startswith("#"):
            start -= 1
        block = old_lines[start:i]
        if not block:
            continue
        first = old_lines[i + 1] if i + 1 < len(old_lines) else None
        at = _find(lines, block)
        if at is None:
            continue
        after = at + len(block)
        if after < len(lines) and lines[after] == line and _first(lines, after) == first:
            continue  # still right above its table
        target = next(
            (k for k in range(after, len(lines)) if lines[k] == line and _first(lines, k) == first),
            None,
        )
        if target is None:
            continue
        between = lines[after:target]
        # The blank line the operator had above the comment goes with it.
        gap = (
            [""]
            if start > 0 and not old_lines[start - 1].strip() and between and between[-1].strip()
            else []
        )
        lines = lines[:at] + between + gap + block + lines[target:]
    return "\n".join(lines) + ("\n" if new.endswith("\n") else "")


def _first(lines: list[str], header: int) -> str | None:
    return lines[header + 1] if header + 1 < len(lines) else None


def _find(lines: list[str], block: list[str]) -> int | None:
    for k in range(len(lines) - len(block) + 1):
        if lines[k : k + len(block)] == block:
            return k
    return None


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _merge(container: Any, desired: Mapping[str, Any]) -> None:
    for key in [k for k in container if k not in desired]:
        del container[key]
    for key, want in desired.items():
        if key not in container:
            container[key] = want
            continue
        have = container[key]
        if isinstance(want, Mapping) and isinstance(have, Table | InlineTable | TOMLDocument):
            _merge(have, want)
        elif _is_table_array(want) and isinstance(have, AoT):
            _merge_table_array(have, want)
        elif _plain(have) != want:
            container[key] = want
    _reorder(container, list(desired))


def _reorder(container: Any, keys: list[str]) -> None:
    if list(container.keys()) == keys:
        return
    # The items themselves move, so each keeps its comments and formatting.
    items = [(k, container[k]) for k in keys]
    for key in keys:
        del container[key]
    for key, item in items:
        container[key] = item


def _identity(entry: Mapping[str, Any]) -> tuple[str, Any] | None:
    for key in _IDENTITY_KEYS:
        if key in entry:
            return key, entry[key]
    return None


def _merge_table_array(aot: AoT, want: list[Mapping[str, Any]]) -> None:
    old: list[Table] = list(aot.body)
    plain = [_plain(t) for t in old]
    used: set[int] = set()
    picked: list[Table | None] = []
    for w in want:
        # The same entry unchanged first, then one with the same identity to edit in place.
        idx = next((i for i, p in enumerate(plain) if i not in used and p == w), None)
        ident = _identity(w)
        if idx is None and ident is not None:
            idx = next(
                (i for i, p in enumerate(plain) if i not in used and _identity(p) == ident), None
            )
        if idx is None:
            picked.append(None)
            continue
        used.add(idx)
        _merge(old[idx], w)
        picked.append(old[idx])
    if len(picked) == len(old) and all(p is o for p, o in zip(picked, old, strict=True)):
        return
    tables: list[Table] = []
    for w, existing in zip(want, picked, strict=True):
        if existing is None:
            table = tomlkit.table()
            table.update(w)
            tables.append(table)
        else:
            tables.append(existing)
    while len(aot):
        del aot[0]
    for i, table in enumerate(tables):
        # A blank line between an added entry and its neighbours, as between the others.
        new_here = picked[i] is None or (i > 0 and picked[i - 1] is None)
        if i > 0 and new_here and not table.trivia.indent.startswith("\n"):
            table.trivia.indent = "\n" + table.trivia.indent
        aot.append(table)
