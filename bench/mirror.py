"""Cache-hit speed of the agent next to docker-registry serving the same content from disk.

Run:  .venv/bin/python -m bench.mirror [--blob-mib 256] [--rounds 5] [--manifest-requests 2000]

Both servers run on loopback as subprocesses; the same client (aiohttp, one process) reads
from each in alternating rounds, so machine noise hits both alike. Reported as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = "bench/img"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def push(base: str, blob: bytes) -> tuple[str, str]:
    """Push one layer, a config and a manifest with the registry's own upload API."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    async with aiohttp.ClientSession() as s:
        digests = []
        for data in (blob, config):
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            async with s.post(f"{base}/v2/{REPO}/blobs/uploads/") as r:
                assert r.status == 202, r.status
                loc = r.headers["Location"]
            url = loc if loc.startswith("http") else base + loc
            sep = "&" if "?" in url else "?"
            async with s.put(
                f"{url}{sep}digest={d}",
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            ) as r:
                assert r.status == 201, (r.status, await r.text())
            digests.append((d, len(data)))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": digests[1][0],
                    "size": digests[1][1],
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": digests[0][0],
                        "size": digests[0][1],
                    }
                ],
            }
        ).encode()
        async with s.put(
            f"{base}/v2/{REPO}/manifests/v1",
            data=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        ) as r:
            assert r.status == 201, (r.status, await r.text())
    return digests[0][0], "v1"


async def read_blob(
    session: aiohttp.ClientSession, url: str, concurrency: int
) -> tuple[float, int]:
    async def one() -> int:
        n = 0
        async with session.get(url) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_chunked(1 << 20):
                n += len(chunk)
        return n

    t0 = time.perf_counter()
    sizes = await asyncio.gather(*(one() for _ in range(concurrency)))
    return time.perf_counter() - t0, sum(sizes)


async def read_blob_curl(url: str, concurrency: int) -> tuple[float, int]:
    """The same with curl processes: a client fast enough that the server is what's measured."""
    t0 = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(concurrency)
    ]
    outs = [await p.communicate() for p in procs]
    secs = time.perf_counter() - t0
    return secs, sum(int(o[0] or b"0") for o in outs)


async def manifest_latency(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            await r.read()
            assert r.status == 200
        out.append(time.perf_counter() - t0)
    return out


def cpu_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _measure(
    args: argparse.Namespace,
    targets: dict[str, str],
    pids: dict[str, int],
    digest: str,
    tag: str,
) -> dict[str, dict[str, float]]:
    """Per target: median blob throughput, its server's CPU, manifest latency p50 and p99."""
    results: dict[str, dict[str, float]] = {k: {} for k in targets}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        # Warm the agent's cache (this pull goes upstream) and both page caches.
        for base in targets.values():
            await read_blob(s, f"{base}/v2/{REPO}/blobs/{digest}", 1)
            await manifest_latency(s, f"{base}/v2/{REPO}/manifests/{tag}", 20)
        tput: dict[str, list[float]] = {k: [] for k in targets}
        cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
        for _ in range(args.rounds):
            for name, base in targets.items():
                c0 = cpu_of(pids[name])
                url = f"{base}/v2/{REPO}/blobs/{digest}"
                if args.client == "curl":
                    secs, nbytes = await read_blob_curl(url, args.concurrency)
                else:
                    secs, nbytes = await read_blob(s, url, args.concurrency)
                cpu[name] += cpu_of(pids[name]) - c0
                tput[name].append(nbytes / secs / (1 << 20))
        lat: dict[str, list[float]] = {k: [] for k in targets}
        per_round = max(1, args.manifest_requests // args.rounds)
        for _ in range(args.rounds):
            for name, base in targets.items():
                lat[name] += await manifest_latency(
                    s, f"{base}/v2/{REPO}/manifests/{tag}", per_round
                )
    for name in targets:
        results[name]["blob_mib_s_median"] = statistics.median(tput[name])
        results[name]["server_cpu_s"] = cpu[name]
        q = statistics.quantiles(lat[name], n=100)
        results[name]["manifest_p50_ms"] = statistics.median(lat[name]) * 1000
        results[name]["manifest_p99_ms"] = q[98] * 1000
    return results


def _report(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    ratio = results["agent"]["blob_mib_s_median"] / results["registry"]["blob_mib_s_median"]
    added = results["agent"]["manifest_p50_ms"] - results["registry"]["manifest_p50_ms"]
    summary = {
        "blob_mib": args.blob_mib,
        "client": args.client,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "results": results,
        "blob_throughput_ratio_agent_vs_registry": ratio,
        "manifest_added_p50_ms": added,
        "client_cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime
        + resource.getrusage(resource.RUSAGE_SELF).ru_stime,
    }
    print(json.dumps(summary, indent=2))
    print(
        "\ncache-hit blob throughput: "
        f"agent {results['agent']['blob_mib_s_median']:.0f} MiB/s, "
        f"registry {results['registry']['blob_mib_s_median']:.0f} MiB/s, ratio {ratio:.2f}x"
    )
    print(
        f"manifest p50: agent {results['agent']['manifest_p50_ms']:.2f} ms, registry "
        f"{results['registry']['manifest_p50_ms']:.2f} ms, added {added:+.2f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blob-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--manifest-requests", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--client", choices=("aiohttp", "curl"), default="curl")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ls-bench-"))
    reg_port, agent_port = free_port(), free_port()
    reg_name = f"127.0.0.1:{reg_port}"
    (work / "registry.yml").write_text(
        f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n"
        f"storage: {{filesystem: {{rootdirectory: {work}/reg}}}}\nhttp: {{addr: {reg_name}}}\n"
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                ["docker-registry", "serve", str(work / "registry.yml")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        reg = f"http://{reg_name}"
        await wait_http(reg + "/v2/")
        blob = secrets.token_bytes(args.blob_mib << 20)
        digest, tag = await push(reg, blob)
        del blob
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "layerswarm",
                    "--log-level",
                    "WARNING",
                    "agent",
                    "--listen",
                    f"127.0.0.1:{agent_port}",
                    "--data-dir",
                    str(work / "agent"),
                    "--upstream",
                    f"{reg_name}={reg}",
                    "--default-upstream",
                    reg_name,
                    "--tag-ttl",
                    "1h",
                    "--no-p2p",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        agent = f"http://127.0.0.1:{agent_port}"
        await wait_http(agent + "/healthz")
        targets = {"registry": reg, "agent": agent}
        pids = {"registry": procs[0].pid, "agent": procs[1].pid}
        results = await _measure(args, targets, pids, digest, tag)
        _report(args, results)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    asyncio.run(main())
