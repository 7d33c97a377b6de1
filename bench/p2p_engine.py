"""Benchmark of the peer-transfer engine alone: one seed to 1, then to 4 receivers, on loopback.

    python -m bench.p2p_engine --size 64 --segment 16 --receivers 4

A layer of SIZE MiB is cut into SEGMENT MiB segment torrents seeded by one engine; each
receiver fetches every segment (all segments at once, as the agent would when the tracker
already knows them) from the seed and from the other receivers. Everything runs in this
process on 127.0.0.1, plain and with fleet TLS, and reports wall time, MiB/s per receiver,
aggregate delivered MiB/s and the CPU the whole process burned (cores = CPU s / wall s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.p2p import pki
from agent.p2p.engine import FleetTLS, SegmentTorrent
from agent.p2p.libtorrent_impl import EngineOptions, LibtorrentEngine

MiB = 1 << 20
LOCAL = "127.0.0.1"


@dataclass
class Result:
    mode: str
    receivers: int
    seconds: float
    cpu_seconds: float
    size_mib: float

    @property
    def per_receiver(self) -> float:
        return self.size_mib / self.seconds

    @property
    def aggregate(self) -> float:
        return self.size_mib * self.receivers / self.seconds


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _tls_factory() -> Callable[[str], FleetTLS]:
    ca = pki.generate_ca("bench-fleet")

    def make(agent_id: str) -> FleetTLS:
        key, csr = pki.generate_key_and_csr(agent_id)
        return FleetTLS(ca_pem=ca[0], cert_pem=pki.sign_csr(ca[0], ca[1], csr, 1), key_pem=key)

    return make


async def run_once(
    work: Path, segments: list[Path], receivers: int, tls: bool, size_mib: float
) -> Result:
    make_tls = _tls_factory() if tls else None
    engines: list[LibtorrentEngine] = []

    async def engine(name: str) -> LibtorrentEngine:
        e = LibtorrentEngine(EngineOptions(), tls=make_tls(name) if make_tls else None)
        await e.start()
        engines.append(e)
        return e

    try:
        seed = await engine("seed")
        torrents: list[SegmentTorrent] = []
        for i, path in enumerate(segments):
            seg = await seed.make_segment(path, name=f"bench-seg{i}")
            await seed.seed(seg.metainfo, path)
            torrents.append(seg)
        rx = [await engine(f"rx{i}") for i in range(receivers)]
        peers = [(LOCAL, e.peer_port) for e in [seed, *rx]]
        for i in range(receivers):
            (work / f"rx{i}").mkdir()

        async def receive(i: int) -> None:
            others = [p for p in peers if p[1] != rx[i].peer_port]
            await asyncio.gather(
                *(
                    rx[i].fetch(seg.metainfo, work / f"rx{i}" / f"seg{n}", others, stall_timeout=30)
                    for n, seg in enumerate(torrents)
                )
            )

        cpu0, t0 = _cpu(), time.perf_counter()
        await asyncio.gather(*(receive(i) for i in range(receivers)))
        seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
        for i in range(receivers):
            for n, path in enumerate(segments):
                got = work / f"rx{i}" / f"seg{n}"
                assert got.stat().st_size == path.stat().st_size, got
        return Result("tls" if tls else "plain", receivers, seconds, cpu, size_mib)
    finally:
        for e in engines:
            await e.close()
        for i in range(receivers):
            shutil.rmtree(work / f"rx{i}", ignore_errors=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=64, help="layer size in MiB")
    ap.add_argument("--segment", type=float, default=16, help="segment size in MiB")
    ap.add_argument("--receivers", type=int, default=4, help="receivers in the fan-out run")
    ap.add_argument(
        "--dir", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="p2p-bench-", dir=args.dir))
    try:
        total = int(args.size * MiB)
        seg_size = int(args.segment * MiB)
        segments: list[Path] = []
        (work / "seed").mkdir()
        for i, off in enumerate(range(0, total, seg_size)):
            path = work / "seed" / f"seg{i}"
            path.write_bytes(os.urandom(min(seg_size, total - off)))
            segments.append(path)
        results: list[Result] = []
        for tls in (False, True):
            for receivers in sorted({1, args.receivers}):
                r = await run_once(work, segments, receivers, tls, args.size)
                results.append(r)
                print(
                    f"{r.mode:5} receivers={r.receivers} {r.seconds:6.2f}s "
                    f"{r.per_receiver:7.1f} MiB/s each {r.aggregate:7.1f} MiB/s total "
                    f"cpu={r.cpu_seconds:5.2f}s ({r.cpu_seconds / r.seconds:.2f} cores)",
                    flush=True,
                )
        print()
        print(
            "| mode | receivers | seconds | MiB/s per receiver | MiB/s delivered | CPU s | cores |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in results:
            print(
                f"| {r.mode} | {r.receivers} | {r.seconds:.2f} | {r.per_receiver:.1f} | "
                f"{r.aggregate:.1f} | {r.cpu_seconds:.2f} | {r.cpu_seconds / r.seconds:.2f} |"
            )
        by = {(r.mode, r.receivers): r for r in results}
        for n in (1, args.receivers):
            ratio = by[("tls", n)].aggregate / by[("plain", n)].aggregate
            # Same bytes delivered in both modes, so CPU seconds compare directly.
            cpu_ratio = by[("tls", n)].cpu_seconds / by[("plain", n)].cpu_seconds
            print(f"TLS/plain with {n} receiver(s): throughput {ratio:.2f}x, CPU {cpu_ratio:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
