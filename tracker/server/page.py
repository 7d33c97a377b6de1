"""The fleet page at ``/``: what a platform team keeps open during a rollout.

Rendered on the server from the same data as ``GET /v1/fleet`` (``Tracker.fleet``): savings,
big and per region; preheats with per-layer progress; the layers in demand by image name and
size; agents with last-seen, role and bytes in and out; and a chart of upstream vs peer bytes
drawn as inline SVG. No script, no CDN, nothing fetched but the page itself; it refreshes
itself every few seconds and reflows from a phone to a wide screen.
"""

from __future__ import annotations

import html
import itertools
import time
from collections.abc import Sequence
from typing import Any

REFRESH_SECONDS = 5
_CHART_W, _CHART_H = 1000, 200

_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f4f6f9}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.3em 1em;padding:.8em 1.2em;
background:#1d2330;color:#fff}
header h1{font-size:1.3em;margin:0}
header .muted{color:#b7c0cf}
main{padding:1em 1.2em;display:grid;gap:1em;
grid-template-columns:repeat(auto-fit,minmax(min(100%,36em),1fr))}
section{background:#fff;border-radius:8px;padding:.8em 1em;box-shadow:0 1px 2px #0001;min-width:0}
section.wide{grid-column:1/-1}
h2{font-size:1.05em;margin:.1em 0 .6em}
h3{font-size:1em;margin:0}
.cards{display:grid;gap:.8em;grid-template-columns:repeat(auto-fit,minmax(11em,1fr))}
.card{border:1px solid #e3e7ee;border-radius:8px;padding:.6em .8em}
.card .label{color:#5b6577;font-size:.85em}
.card .value{font-size:1.8em;font-weight:600}
.card.big .value{font-size:3em;color:#137a3f}
.card .sub{color:#5b6577;font-size:.85em}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{padding:.3em .5em;text-align:left;border-bottom:1px solid #eef0f4;white-space:nowrap}
th{color:#5b6577;font-weight:600}
td.num,th.num{text-align:right}
.muted{color:#5b6577}
code{font-size:.9em}
.bar{background:#e8ecf2;border-radius:4px;height:.7em;min-width:6em;overflow:hidden}
.bar span{display:block;height:100%;background:#2f74d0}
.job{border-top:1px solid #eef0f4;padding:.6em 0}
.job:first-of-type{border-top:0}
.job .head{display:flex;flex-wrap:wrap;gap:.4em 1em;align-items:center;margin-bottom:.4em}
.badge{border-radius:999px;padding:.05em .6em;font-size:.8em;background:#e8ecf2}
.badge.running{background:#dbe8fb;color:#1f56a3}.badge.done{background:#d9f2e3;color:#137a3f}
.badge.failed,.badge.no_agents{background:#fbdcdc;color:#a31f1f}.badge.pending{background:#fbefd6;color:#8a5a00}
.chart svg{width:100%;height:12em;display:block;background:#fafbfd}
.axis{display:flex;justify-content:space-between;font-size:.8em}
.legend{display:flex;gap:1em;font-size:.85em}
.legend i{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.3em}
"""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _pct(ratio: float) -> str:
    return f"{100 * ratio:.1f}%"


def _e(value: Any) -> str:
    return html.escape(str(value))


def short_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}" if hexpart else digest


def split_image(ref: str) -> tuple[str, str]:
    """("registry.example.com", "team/app:2.0") from a full reference; registry may be ""."""
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "", ref


def _image_cell(ref: str | None) -> str:
    if not ref:
        return '<span class="muted">-</span>'
    registry, name = split_image(ref)
    where = f' <span class="muted">{_e(registry)}</span>' if registry else ""
    return f'<span class="image">{_e(name)}</span>{where}'


def _bar(ratio: float) -> str:
    width = max(0.0, min(1.0, ratio)) * 100
    return f'<div class="bar" title="{width:.0f}%"><span style="width:{width:.1f}%"></span></div>'


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: set[int] | None = None
) -> str:
    numeric = numeric or set()

    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _savings(fleet: dict[str, Any]) -> str:
    totals = fleet.get("totals", {})
    agents = fleet.get("agents", [])
    seeds = sum(1 for a in agents if a.get("role") == "seed")
    cards = [
        '<div class="card big" id="savings-total">'
        '<div class="label">layer bytes served by peers</div>'
        f'<div class="value">{_pct(float(fleet.get("savings_ratio", 0.0)))}</div>'
        f'<div class="sub">peers {human_bytes(totals.get("peer_bytes", 0))} · upstream '
        f"{human_bytes(totals.get('upstream_bytes', 0))} · since the fleet began</div></div>"
    ]
    for r in fleet.get("regions", []):
        name = r.get("region") or "(no region)"
        cards.append(
            f'<div class="card region" data-region="{_e(r.get("region", ""))}">'
            f'<div class="label">region {_e(name)}</div>'
            f'<div class="value">{_pct(float(r.get("savings_ratio", 0.0)))}</div>'
            f'<div class="sub">upstream {human_bytes(r.get("upstream_bytes", 0))} · peers '
            f"{human_bytes(r.get('peer_bytes', 0))}</div></div>"
        )
    cards.append(
        '<div class="card" id="agent-count"><div class="label">live agents</div>'
        f'<div class="value">{len(agents)}</div>'
        f'<div class="sub">{_count(seeds, "seed")} · {_count(len(agents) - seeds, "peer")}'
        "</div></div>"
    )
    return (
        '<section class="wide" id="savings"><h2>Savings</h2>'
        f'<div class="cards">{"".join(cards)}</div></section>'
    )


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def chart_svg(history: Sequence[dict[str, Any]]) -> str:
    """Upstream and peer bytes per second between consecutive samples, as two lines.

    The plot stretches to the section's width at a fixed height (the strokes do not scale);
    its labels are HTML around it, so they stay readable on a phone and on a wide screen.
    """
    rates: list[tuple[float, float, float]] = []
    for a, b in itertools.pairwise(history):
        dt = float(b["time"]) - float(a["time"])
        if dt <= 0:
            continue
        up = max(0.0, (b["upstream_bytes"] - a["upstream_bytes"]) / dt)
        peer = max(0.0, (b["peer_bytes"] - a["peer_bytes"]) / dt)
        rates.append((float(b["time"]), up, peer))
    if len(rates) < 2:
        return (
            '<p class="muted" id="chart-empty">collecting data: the chart starts after three '
            "samples of the fleet totals, one per heartbeat interval</p>"
        )
    t0, t1 = rates[0][0], rates[-1][0]
    span = max(t1 - t0, 1.0)
    top = max(max(r[1], r[2]) for r in rates) or 1.0

    def points(index: int) -> str:
        pts = []
        for t, up, peer in rates:
            rate = (up, peer)[index]
            pts.append(((t - t0) / span * _CHART_W, _CHART_H - rate / top * (_CHART_H - 4)))
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)

    line = 'fill="none" stroke-width="2.5" vector-effect="non-scaling-stroke"'
    return (
        f'<div class="chart"><span class="muted">{human_bytes(top)}/s</span>'
        f'<svg id="chart-svg" viewBox="0 0 {_CHART_W} {_CHART_H}" preserveAspectRatio="none" '
        'role="img" aria-label="upstream and peer bytes per second over time">'
        f'<line x1="0" y1="{_CHART_H}" x2="{_CHART_W}" y2="{_CHART_H}" stroke="#ccd2dc" '
        'vector-effect="non-scaling-stroke"/>'
        f'<polyline class="series upstream" stroke="#d0582f" {line} points="{points(0)}"/>'
        f'<polyline class="series peers" stroke="#2f74d0" {line} points="{points(1)}"/>'
        "</svg>"
        f'<div class="axis muted"><span>{_span(span)}</span><span>now</span></div>'
        '<div class="legend"><span><i style="background:#d0582f"></i>from upstream</span>'
        '<span><i style="background:#2f74d0"></i>from peers</span></div></div>'
    )


def _preheats(fleet: dict[str, Any]) -> str:
    jobs = fleet.get("preheats", [])
    if not jobs:
        body = '<p class="muted">no rollouts or preheats yet (`layerswarm preheat IMAGE`)</p>'
        return f'<section class="wide" id="rollouts"><h2>Rollouts and preheats</h2>{body}</section>'
    parts = []
    for job in jobs:
        agents = job.get("agents", [])
        targets = max(1, len(agents))
        done_agents = sum(1 for a in agents if a.get("state") == "done")
        layers = job.get("layers", [])
        total = sum(int(lp.get("size", 0)) for lp in layers) * targets
        done = sum(int(lp.get("done_bytes", 0)) for lp in layers)
        scope = job.get("scope", "")
        where = job.get("region") or job.get("zone") or "every region"
        rows = [
            [
                f"<code>{_e(short_digest(str(lp.get('digest', ''))))}</code>",
                human_bytes(int(lp.get("size", 0))),
                _bar(
                    int(lp.get("done_bytes", 0)) / (int(lp.get("size", 0)) * targets)
                    if lp.get("size")
                    else 0.0
                ),
                f"{int(lp.get('agents_done', 0))}/{len(agents)}",
            ]
            for lp in layers
        ]
        state = str(job.get("state", "pending"))
        parts.append(
            f'<article class="job" data-state="{_e(state)}" data-job="{_e(job.get("id", ""))}">'
            '<div class="head">'
            f"<h3>{_image_cell(str(job.get('image', '')))}</h3>"
            f'<span class="badge {_e(state)}">{_e(state)}</span>'
            f'<span class="muted">{_e(scope)} in {_e(where)} · {done_agents}/{len(agents)} '
            f"agents done · {human_bytes(done)} of {human_bytes(total)}</span>"
            + (f'<span class="reason">{_e(job["reason"])}</span>' if job.get("reason") else "")
            + "</div>"
            f"{_bar(done / total if total else 0.0)}"
            + (
                _table(["layer", "size", "progress", "agents done"], rows, numeric={1, 3})
                if rows
                else '<p class="muted">waiting for the first agent to report</p>'
            )
            + "</article>"
        )
    return (
        '<section class="wide" id="rollouts"><h2>Rollouts and preheats</h2>'
        + "".join(parts)
        + "</section>"
    )


def _layers(fleet: dict[str, Any]) -> str:
    hottest = fleet.get("hottest", [])
    if not hottest:
        body = '<p class="muted">no lookups yet</p>'
    else:
        body = _table(
            ["image", "layer", "size", "holders", "fetching", "lookups"],
            [
                [
                    _image_cell(h.get("image")),
                    f"<code>{_e(short_digest(str(h.get('digest', ''))))}</code>",
                    human_bytes(int(h.get("size", 0))) if h.get("size") else "-",
                    _e(h.get("holders", 0)),
                    _e(h.get("fetchers", 0)),
                    _e(h.get("lookups", 0)),
                ]
                for h in hottest
            ],
            numeric={2, 3, 4, 5},
        )
    return f'<section class="wide" id="images"><h2>Layers in demand</h2>{body}</section>'


def _agents(fleet: dict[str, Any], now: float, limit: int = 1000) -> str:
    agents = fleet.get("agents", [])
    rows = []
    for a in agents[:limit]:
        c = a.get("counters", {})
        where = "/".join(x for x in (a.get("region"), a.get("zone")) if x) or "-"
        rows.append(
            [
                f"<code>{_e(a.get('agent_id', '?'))}</code>",
                _e(where),
                _e(a.get("role", "?")),
                _ago(a.get("last_seen"), now),
                human_bytes(int(c.get("peer_bytes", 0))),
                human_bytes(int(c.get("upstream_bytes", 0))),
                human_bytes(int(c.get("uploaded_bytes", 0))),
            ]
        )
    more = (
        f'<p class="muted">and {len(agents) - limit} more (see /v1/fleet)</p>'
        if len(agents) > limit
        else ""
    )
    table = _table(
        ["agent", "region/zone", "role", "last seen", "in: peers", "in: upstream", "out: peers"],
        rows,
        numeric={4, 5, 6},
    )
    return f'<section class="wide" id="agents"><h2>Agents</h2>{table}{more}</section>'


def render_page(fleet: dict[str, Any]) -> str:
    now = float(fleet.get("now") or time.time())
    updated = time.strftime("%H:%M:%S UTC", time.gmtime(now))
    return "".join(
        [
            '<!doctype html><html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
            "<title>layerswarm fleet</title>",
            f"<style>{_STYLE}</style></head><body>",
            "<header><h1>layerswarm fleet</h1>",
            f'<span class="muted" id="updated">updated {updated} · refreshes every '
            f"{REFRESH_SECONDS} s</span></header><main>",
            _savings(fleet),
            '<section class="wide" id="chart"><h2>Bytes per second: upstream vs peers</h2>',
            chart_svg(fleet.get("history", [])),
            "</section>",
            _preheats(fleet),
            _layers(fleet),
            _agents(fleet, now),
            "</main></body></html>",
        ]
    )
