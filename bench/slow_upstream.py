"""Slow upstream, a peer holding the layer: how long a pull takes from the peer, against the
same pull from the upstream alone.

    python -m bench.slow_upstream [--upstream-mbit 16] [--peer-mbit 160] [--image-mib 32]
        [--repeat 3] [--json OUT]

Needs root (network namespaces). Each run builds a fresh topology: host 1 the upstream
registry and the tracker, its upload shaped to ``--upstream-mbit``; three agent hosts, the
first (the holder) shaped to ``--peer-mbit``. The holder pulls the image first; then agent 2
(same region: the holder is handed out) and agent 3 (another region: no holder, so the
upstream alone) pull it one after the other, each timed around a skopeo pull. The upstream's
access log counts agent 2's blob requests (expected 0) and its metrics the peer bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MiB = 1 << 20


@dataclass
class Run:
    peer_seconds: float
    upstream_seconds: float
    peer_bytes: float
    upstream_blob_gets_by_follower: int


def one_run(workdir: Path, upstream_mbit: float, peer_mbit: float, image_mib: float) -> Run:
    from testbed.clients import compare_dir_with_image
    from testbed.fleet import Fleet
    from testbed.netns import Topology

    upload = {1: f"{upstream_mbit}mbit", 2: f"{peer_mbit}mbit"}
    with Topology(4, upload=upload) as topo:
        fleet = Fleet(topo, workdir)
        try:
            fleet.start_registry()
            fleet.start_tracker()
            image = fleet.push_image([int(image_mib * MiB)])
            fleet.start_agent(1)
            compare_dir_with_image(fleet.pull(1, image), image)
            fleet.start_agent(2)
            fleet.start_agent(3, region="elsewhere")
            times = {}
            for i in (2, 3):
                t0 = time.monotonic()
                dest = fleet.pull(i, image)
                times[i] = time.monotonic() - t0
                compare_dir_with_image(dest, image)
            assert fleet.registry is not None
            ip2 = topo.hosts[2].ip
            gets = [
                line
                for line in fleet.registry.requests(kind="blobs")
                if line.remote.rsplit(":", 1)[0] == ip2
            ]
            return Run(
                peer_seconds=times[2],
                upstream_seconds=times[3],
                peer_bytes=fleet.metric(2, "layerswarm_peer_bytes_total"),
                upstream_blob_gets_by_follower=len(gets),
            )
        finally:
            fleet.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream-mbit", type=float, default=16.0)
    ap.add_argument("--peer-mbit", type=float, default=160.0)
    ap.add_argument("--image-mib", type=float, default=32.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    runs = []
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="layerswarm-slow-upstream-") as tmp:
            run = one_run(Path(tmp), args.upstream_mbit, args.peer_mbit, args.image_mib)
        runs.append(run)
        print(
            f"run {n + 1}: peer {run.peer_seconds:.2f}s, upstream alone "
            f"{run.upstream_seconds:.2f}s ({run.upstream_seconds / run.peer_seconds:.1f}x); "
            f"peer bytes {run.peer_bytes / MiB:.1f} MiB; follower's upstream blob GETs "
            f"{run.upstream_blob_gets_by_follower}",
            flush=True,
        )
    peer = statistics.median(r.peer_seconds for r in runs)
    upstream = statistics.median(r.upstream_seconds for r in runs)
    print(f"median: peer {peer:.2f}s, upstream alone {upstream:.2f}s ({upstream / peer:.1f}x)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
