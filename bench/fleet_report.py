"""Render bench.fleet results: the Markdown table and the completion-time CDF plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _label(s: dict[str, Any]) -> str:
    return str(s.get("label") or s["scenario"])


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def write_timelines(doc: dict[str, Any], path: Path) -> None:
    """Per-node receive and send rates over time, one panel per run that has a timeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [s for s in doc["scenarios"] if s.get("timeline")]
    if not runs:
        return
    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 2.6 * len(runs)), dpi=80, squeeze=False)
    for row, s in enumerate(runs):
        for col, (what, pos) in enumerate((("received", 1), ("sent", 2))):
            ax = axes[row][col]
            for idx, points in sorted(s["timeline"].items(), key=lambda kv: int(kv[0])):
                if int(idx) <= 2:
                    continue  # the upstream and the tracker hosts
                ts = [p[0] for p in points]
                rates = [0.0] + [
                    (points[i][pos] - points[i - 1][pos]) / max(ts[i] - ts[i - 1], 1e-3) / 1e6
                    for i in range(1, len(points))
                ]
                ax.plot(ts, rates, linewidth=0.9, label=f"host {idx}")
            ax.set_title(f"{_label(s)}: MB/s {what} per node", fontsize=8)
            ax.set_xlabel("seconds from the barrier", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[row][1].legend(fontsize=5, ncol=2, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_markdown(doc: dict[str, Any]) -> str:
    p = doc["params"]
    m = doc["machine"]
    mib = doc["image_bytes"] / (1 << 20)
    lines = [
        f"Image {mib:.1f} MiB in {p['layers']} layers; {p['nodes']} nodes; upstream "
        f"{p['upstream_mbit']:g} Mbit/s, node links {p['node_mbit']:g} Mbit/s, "
        f"segment {p['segment_size']}; {m.get('cores')} cores; client skopeo to "
        f"{p.get('client_dest', 'dir')}:.",
        "",
    ]
    if "iperf3_mbit" in m:
        lines += [
            f"Machine capacity: iperf3 between two namespaces {m['iperf3_mbit']:.0f} Mbit/s; "
            f"peer engine 1 seed -> 4 receivers {m['p2p_mib_s']:.0f} MiB/s delivered "
            f"({m['p2p_cores']:.2f} cores).",
            "",
        ]
    lines += [f"WARNING: {w}" for w in doc.get("warnings", [])]
    lines += [
        "| scenario | upstream bytes / image | (in rollout) | p50 s | p99 s | max s | bound s "
        "| max / bound | machine CPU busy | scenario's processes, cores "
        "| tracker requests / node | disk / cached | all bytes right |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in doc["scenarios"]:
        sm = s["summary"]
        disk = sm.get("disk_ratio")
        lines.append(
            f"| {_label(s)} | {sm['upstream_ratio']:.2f}x "
            f"| {sm['upstream_ratio_rollout']:.2f}x | {sm['p50']:.1f} | {sm['p99']:.1f} "
            f"| {sm['max']:.1f} | {s['bound_seconds']:.1f} "
            f"| {sm['max_over_bound']:.2f} | {s['cpu_busy'] * 100:.0f}% "
            f"| {s['cpu_bench_cores']:.2f} ({s.get('cpu_client_cores', 0):.2f} clients) "
            f"| {sm.get('tracker_requests_per_node', 0):.1f} "
            f"| {f'{disk:.2f}x' if disk is not None else '-'} "
            f"| {'yes' if sm['all_verified'] else 'NO'} |"
        )
    lines.append("")
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in doc["scenarios"]:
        groups.setdefault(_label(s), []).append(s["summary"])
    if any(len(g) > 1 for g in groups.values()):
        lines += [
            "Median over runs:",
            "",
            "| scenario | runs | max / bound | p50 / bound | upstream bytes / image |",
            "|---|---|---|---|---|",
        ]
        for label, sums in groups.items():
            lines.append(
                f"| {label} | {len(sums)} | {_median([x['max_over_bound'] for x in sums]):.2f} "
                f"| {_median([x['p50_over_bound'] for x in sums]):.2f} "
                f"| {_median([x['upstream_ratio'] for x in sums]):.2f}x |"
            )
        lines.append("")
    direct = [s["summary"]["max"] for s in doc["scenarios"] if s["scenario"] == "direct"]
    holed = [s for s in doc["scenarios"] if s["scenario"] == "layerswarm-blackholed"]
    if direct and holed:
        for s in holed:
            lines.append(
                f"{_label(s)}: slowest node / slowest direct node = "
                f"{s['summary']['max'] / _median(direct):.2f}"
            )
    for s in doc["scenarios"]:
        if s.get("preheat_seconds") is not None:
            lines.append(f"{_label(s)}: preheat took {s['preheat_seconds']:.1f} s (untimed).")
        for note in s.get("notes", []):
            lines.append(f"{_label(s)}: {note}")
    return "\n".join(lines) + "\n"


def write_cdf(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    bounds: dict[float, list[str]] = {}
    for s in doc["scenarios"]:
        times = s["times"]
        n = len(times)
        xs = [0.0]
        ys = [0.0]
        for i, t in enumerate(times):
            xs += [t, t]
            ys += [i / n, (i + 1) / n]
        ax.plot(xs, ys, label=_label(s), linewidth=1.8)
        bounds.setdefault(round(s["bound_seconds"], 2), []).append(s["scenario"])
    for row, (bound, names) in enumerate(sorted(bounds.items())):
        label = "bound max(S/U, S/B)" if "layerswarm-preheated" not in names else "bound S/B"
        if len(names) > 1 and "layerswarm-preheated" in names:
            label = "bound"
        ax.axvline(bound, color="grey", linestyle="--", linewidth=1)
        # Stagger the labels: the two bounds are often only a few seconds apart.
        ax.text(bound, 1.02 - 0.06 * row, f" {label}", fontsize=7, color="grey", rotation=0)
    ax.set_xlabel("seconds from the barrier to skopeo's exit")
    ax.set_ylabel("fraction of nodes done")
    ax.set_ylim(0, 1.08)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    p = doc["params"]
    ax.set_title(
        f"{p['nodes']} nodes, {doc['image_bytes'] / (1 << 20):.0f} MiB image, "
        f"U={p['upstream_mbit']:g} Mbit/s, B={p['node_mbit']:g} Mbit/s",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
