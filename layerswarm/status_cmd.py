"""``layerswarm status``: the fleet as the tracker sees it, in the terminal.

Live agents, agents per zone, the most looked-up layers, and how many bytes came from peers
versus the upstream. ``--json`` prints the tracker's ``/v1/fleet`` answer unchanged, for
scripts and ``jq``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core import settings
from layerswarm.preheat_cmd import human_bytes, short_digest
from layerswarm.trackerapi import TrackerAccess, TrackerAPIError, TrackerRefused

MAX_AGENT_ROWS = 200


@dataclass(frozen=True)
class StatusConfig(TrackerAccess):
    pass


def configure_parser(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(parser, StatusConfig)
    parser.add_argument(
        "--json", action="store_true", help="print the tracker's fleet JSON unchanged"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return [fmt(list(headers)), fmt(["-" * w for w in widths]), *(fmt(r) for r in cells)]


def ago(then: Any, now: float) -> str:
    if not isinstance(then, int | float):
        return "?"
    seconds = max(0.0, now - float(then))
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render(fleet: dict[str, Any], now: float) -> list[str]:
    agents = fleet.get("agents", [])
    totals = fleet.get("totals", {})
    peer = int(totals.get("peer_bytes", 0))
    upstream = int(totals.get("upstream_bytes", 0))
    ratio = float(fleet.get("savings_ratio", 0.0))
    seeds = sum(1 for a in agents if a.get("role") == "seed")
    lines = [
        f"{len(agents)} live agents ({seeds} seeds); from peers {human_bytes(peer)}, "
        f"from upstream {human_bytes(upstream)}; savings {100 * ratio:.1f}%",
        "",
        "Agents",
    ]
    rows = [
        [
            a.get("agent_id", "?"),
            f"{a.get('address', '?')}:{a.get('peer_port', '?')}",
            a.get("region") or "-",
            a.get("zone") or "-",
            a.get("role", "?"),
            ago(a.get("last_seen"), now),
            human_bytes(int(a.get("counters", {}).get("peer_bytes", 0))),
            human_bytes(int(a.get("counters", {}).get("upstream_bytes", 0))),
        ]
        for a in agents[:MAX_AGENT_ROWS]
    ]
    lines += table(
        ["AGENT", "ADDRESS", "REGION", "ZONE", "ROLE", "LAST SEEN", "FROM PEERS", "FROM UPSTREAM"],
        rows,
    )
    if len(agents) > MAX_AGENT_ROWS:
        lines.append(f"... and {len(agents) - MAX_AGENT_ROWS} more (see --json)")
    regions = fleet.get("regions", [])
    if regions:
        # Since the fleet began, agents that left included: each region should pull once.
        lines += ["", "Regions (since the fleet began)"]
        lines += table(
            ["REGION", "FROM UPSTREAM", "FROM PEERS", "SAVINGS"],
            [
                [
                    r.get("region") or "-",
                    human_bytes(int(r.get("upstream_bytes", 0))),
                    human_bytes(int(r.get("peer_bytes", 0))),
                    f"{100 * float(r.get('savings_ratio', 0.0)):.1f}%",
                ]
                for r in regions
            ],
        )
    lines += ["", "Zones"]
    lines += table(
        ["REGION", "ZONE", "AGENTS"],
        [
            [z.get("region") or "-", z.get("zone") or "-", z.get("agents", 0)]
            for z in fleet.get("zones", [])
        ],
    )
    lines += ["", "Hottest layers"]
    hottest = fleet.get("hottest", [])
    if hottest:
        lines += table(
            ["DIGEST", "LOOKUPS", "HOLDERS", "FETCHING"],
            [
                [
                    short_digest(str(h.get("digest"))),
                    h.get("lookups"),
                    h.get("holders"),
                    h.get("fetchers"),
                ]
                for h in hottest
            ],
        )
    else:
        lines.append("(no lookups yet)")
    return lines


def run(args: argparse.Namespace) -> int:
    config = settings.load(StatusConfig, args)
    api = config.client()
    try:
        fleet = api.fleet()
    except TrackerRefused as exc:
        print(f"layerswarm status: {exc}", file=sys.stderr)
        return 2 if exc.status == 401 else 1
    except TrackerAPIError as exc:
        print(f"layerswarm status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(fleet, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(render(fleet, time.time())) + "\n")
    return 0
