"""What flushing before a rename costs: files written and renamed into a directory, with
``core.durable.replace`` (fsync of the file, rename, fsync of the directory) and with a bare
``os.replace``, for a manifest-sized file, a small layer and a large one.

    python -m bench.durable [--dir DIR] [--count 20] [--json OUT]

``--dir`` should be on the filesystem the agent's data dir lives on (default: a temp dir);
the figures are that filesystem's. The file is written (page cache) before the clock starts:
what is timed is what the agent's commit does after a verified download, per file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core import durable

SIZES = {"4 KiB": 4 << 10, "1 MiB": 1 << 20, "64 MiB": 64 << 20}


def timed(directory: Path, size: int, count: int, flush: bool) -> list[float]:
    data = os.urandom(min(size, 1 << 20))
    out = []
    for i in range(count):
        src = directory / f"partial-{i}"
        with src.open("wb") as f:
            for _ in range(max(1, size // len(data))):
                f.write(data)
        dest = directory / f"blob-{i}"
        t0 = time.perf_counter()
        if flush:
            durable.replace(src, dest)
        else:
            os.replace(src, dest)
        out.append(time.perf_counter() - t0)
        dest.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="layerswarm-durable-", dir=args.dir) as tmp:
        for name, size in SIZES.items():
            count = args.count if size < 16 << 20 else max(3, args.count // 4)
            bare = timed(Path(tmp), size, count, flush=False)
            flushed = timed(Path(tmp), size, count, flush=True)
            row = {
                "rename_ms": statistics.median(bare) * 1000,
                "durable_ms": statistics.median(flushed) * 1000,
                "durable_max_ms": max(flushed) * 1000,
                "durable_mib_s": size / (1 << 20) / statistics.median(flushed),
            }
            results[name] = row
            print(
                f"{name:>6}: rename {row['rename_ms']:.3f} ms, flushed {row['durable_ms']:.2f} ms "
                f"median ({row['durable_max_ms']:.2f} max, {row['durable_mib_s']:.0f} MiB/s), "
                f"{count} files",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
