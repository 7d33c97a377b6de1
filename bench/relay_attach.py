"""How relay followers found their parents in a bench.fleet run, from the agents' logs.

``python -m bench.relay_attach bench/out/RUN/logs`` prints, per scenario run: attachments to
layer chains by who chose the parent (tracker or walk), peers asked per attachment, chain
depths, when the last follower attached (seconds after the first), parents that refused a
tracker's choice, and layers fetched from the upstream because no parent admitted a follower.
Only blobs over 2 MiB count (smaller ones go to everyone at once, no chains); an attachment
is a follower's first admission per blob (with parallel asks several may admit it at once).
"""

from __future__ import annotations

import collections
import datetime
import re
import statistics
import sys
from pathlib import Path

_LINE = re.compile(
    r"^(\S+ \S+) INFO agent\.relay\.source following parent=(\S+) digest=(\S+) offset=(\d+) "
    r"depth=(\d+)(?: chosen_by=(\S+) asked=(\d+))?"
)
_CACHED = re.compile(r"agent\.fetch cached digest=(\S+) .* bytes=(\d+)")


def _when(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def summarize(run: Path) -> dict[str, object]:
    rows = []
    sizes: dict[str, int] = {}
    refused = upstream = 0
    for log in sorted(run.glob("agent-*/logs/agent.std*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = _LINE.match(line)
            if m:
                stamp, parent, digest, offset, depth, by, asked = m.groups()
                rows.append((_when(stamp), log.parts[-3], parent, digest, int(offset),
                             int(depth), by or "walk", int(asked or 0)))  # fmt: skip
            elif c := _CACHED.search(line):
                sizes[c.group(1)] = int(c.group(2))
            elif "parent chosen by the tracker refused" in line:
                refused += 1
            elif "no parent for digest=" in line:
                upstream += 1
    deep = {d for d, n in sizes.items() if n > 2 << 20}
    seen: set[tuple[str, str]] = set()
    first = []
    for r in sorted(rows):
        if r[3] in deep and r[4] == 0 and (r[1], r[3]) not in seen:
            seen.add((r[1], r[3]))
            first.append(r)
    if not first:
        return {"attachments": 0}
    depths = collections.Counter(r[5] for r in first)
    t0 = min(r[0] for r in first)
    return {
        "attachments": len(first),
        "reattachments": sum(1 for r in rows if r[3] in deep and r[4] > 0),
        "chosen_by": dict(collections.Counter(r[6] for r in first)),
        "asked_mean": round(statistics.mean(r[7] for r in first), 2),
        "asked_max": max(r[7] for r in first),
        "depth_max": max(depths),
        "depth_median": statistics.median(r[5] for r in first),
        "last_attach_s": round(max(r[0] for r in first) - t0, 2),
        "tracker_choice_refused": refused,
        "no_parent_went_upstream": upstream,
    }


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else ".")
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        print(run.name, summarize(run))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
