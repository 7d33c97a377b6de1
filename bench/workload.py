"""Shared by the load test and the soak: pushing images with the registry's own API, pulling
them through an agent the way a runtime does (manifest, then config and layers, each checked
against its digest), reading a process's memory and file descriptors from /proc, a tracker
for their peer-to-peer modes, and the after-checks of an agent's data dir and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_blob(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


@dataclass(frozen=True)
class Pushed:
    repo: str
    tag: str
    manifest_digest: str
    blobs: dict[str, int]  # digest -> size: config and layers


async def push_blob(session: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> str:
    d = digest_of(data)
    async with session.head(f"{base}/v2/{repo}/blobs/{d}") as r:
        if r.status == 200:
            return d
    async with session.post(f"{base}/v2/{repo}/blobs/uploads/") as r:
        if r.status != 202:
            raise RuntimeError(f"upload start answered {r.status}")
        loc = r.headers["Location"]
    url = loc if loc.startswith("http") else base + loc
    sep = "&" if "?" in url else "?"
    async with session.put(
        f"{url}{sep}digest={d}",
        # A file-like body is streamed; raw bytes this big would be one blocking write.
        data=io.BytesIO(data),
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    ) as r:
        if r.status != 201:
            raise RuntimeError(f"upload answered {r.status}: {await r.text()}")
    return d


async def push_image(
    session: aiohttp.ClientSession, base: str, repo: str, tag: str, layers: list[bytes]
) -> Pushed:
    """Push layers, a config naming them and a manifest tagged ``tag`` (moving the tag)."""
    blobs: dict[str, int] = {}
    descriptors = []
    for data in layers:
        d = await push_blob(session, base, repo, data)
        blobs[d] = len(data)
        descriptors.append({"mediaType": LAYER_TYPE, "digest": d, "size": len(data)})
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in descriptors]},
        }
    ).encode()
    cd = await push_blob(session, base, repo, config)
    blobs[cd] = len(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": cd, "size": len(config)},
            "layers": descriptors,
        }
    ).encode()
    async with session.put(
        f"{base}/v2/{repo}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": MANIFEST_TYPE},
    ) as r:
        if r.status != 201:
            raise RuntimeError(f"manifest push answered {r.status}: {await r.text()}")
    return Pushed(repo, tag, digest_of(manifest), blobs)


class PullError(Exception):
    """A pull that did not end with the right bytes (status, cut body or wrong digest)."""


class CorruptPull(PullError):
    """A complete body that does not hash to its digest: never acceptable, restart or not."""


class StalledPull(PullError):
    """No byte for the client's read timeout (``sock_read``): never acceptable either. A
    restart cuts a connection (reset, refused, closed); it does not leave one silent."""


def _pull_error(url: str, exc: BaseException) -> PullError:
    kind = StalledPull if isinstance(exc, aiohttp.SocketTimeoutError) else PullError
    return kind(f"{url}: {type(exc).__name__}: {exc}")


@dataclass
class PullResult:
    manifest_digest: str
    bytes: int  # every byte received, manifest included
    blobs: int


async def get_verified(
    session: aiohttp.ClientSession, url: str, digest: str, headers: dict[str, str] | None = None
) -> tuple[bytes, float]:
    """GET ``url``; the body must hash to ``digest``. Returns (body, seconds to first byte)."""
    t0 = time.perf_counter()
    try:
        async with session.get(url, headers=headers) as r:
            if r.status != 200:
                raise PullError(f"{url}: HTTP {r.status}: {(await r.text())[:200]}")
            first = await r.content.readany()
            ttfb = time.perf_counter() - t0
            body = first + await r.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _pull_error(url, exc) from exc
    if digest_of(body) != digest:
        raise CorruptPull(f"{url}: body does not hash to {digest}")
    return body, ttfb


async def pull_image(
    session: aiohttp.ClientSession,
    agent: str,
    repo: str,
    tag: str,
    concurrency: int = 4,
    on_bytes: Callable[[int], None] | None = None,
) -> PullResult:
    """Resolve ``tag`` through the agent, then fetch config and layers, each verified.

    ``on_bytes`` hears of every complete body as it arrives, also in a pull that fails
    later, so byte counts can be compared with what the agent says it served."""
    count = on_bytes or (lambda _n: None)
    url = f"{agent}/v2/{repo}/manifests/{tag}"
    try:
        async with session.get(url, headers={"Accept": MANIFEST_TYPE}) as r:
            if r.status != 200:
                raise PullError(f"{url}: HTTP {r.status}: {(await r.text())[:200]}")
            body = await r.read()
            header = r.headers.get("Docker-Content-Digest", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _pull_error(url, exc) from exc
    if header != digest_of(body):
        raise CorruptPull(f"{url}: manifest does not hash to its Docker-Content-Digest")
    count(len(body))
    doc = json.loads(body)
    wanted = [doc["config"]["digest"], *(x["digest"] for x in doc["layers"])]
    sem = asyncio.Semaphore(concurrency)

    async def one(d: str) -> int:
        async with sem:
            data, _ = await get_verified(session, f"{agent}/v2/{repo}/blobs/{d}", d)
            count(len(data))
            return len(data)

    sizes = await asyncio.gather(*(one(d) for d in wanted))
    return PullResult(header, len(body) + sum(sizes), len(wanted))


@dataclass
class ProcSample:
    rss: int  # bytes
    peak_rss: int  # bytes (VmHWM)
    fds: int


def sample(pid: int) -> ProcSample:
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return ProcSample(rss, hwm, len(os.listdir(f"/proc/{pid}/fd")))


@dataclass
class Sampler:
    """Samples a process every ``interval`` seconds while running; keeps the maxima."""

    pid: int
    interval: float = 0.1
    max_rss: int = 0
    max_fds: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._take()

    def _take(self) -> None:
        s = sample(self.pid)
        self.max_rss = max(self.max_rss, s.rss)
        self.max_fds = max(self.max_fds, s.fds)
        self.samples += 1

    async def _run(self) -> None:
        while True:
            self._take()
            await asyncio.sleep(self.interval)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def start_tracker(workdir: Path) -> tuple[Any, list[str]]:
    """A real tracker on loopback (a testbed Proc); returns it and the agent flags that reach
    it, peer port and address included."""
    from testbed.procs import Proc, free_port, wait_for_http

    token = workdir / "fleet-token"
    token.write_text(secrets.token_urlsafe(24))
    token.chmod(0o600)
    url = f"http://127.0.0.1:{free_port()}"
    tracker = Proc(
        [sys.executable, "-m", "layerswarm", "tracker", "--listen", url.removeprefix("http://"),
         # A short TTL: heartbeats every second, so a restarted agent is back in seconds.
         "--token-file", str(token), "--agent-ttl", "3s"],
        workdir / "tracker-logs", name="tracker",
    ).start()  # fmt: skip
    try:
        wait_for_http(f"{url}/healthz", timeout=30, proc=tracker)
    except BaseException:
        tracker.stop()
        raise
    # Port 0: a restarted agent comes back on another peer port, which the tracker must learn
    # from its next heartbeat, as after a real node's restart.
    flags = ["--tracker", url, "--tracker-token-file", str(token)]
    return tracker, [*flags, "--peer-listen", "127.0.0.1:0", "--advertise-address", "127.0.0.1"]


def served_by_source(metrics: Iterable[str]) -> dict[str, float]:
    """``layerswarm_served_bytes_total`` by source, summed over agents' /metrics texts."""
    served: dict[str, float] = {}
    for text in metrics:
        for m in re.finditer(
            r'^layerswarm_served_bytes_total\{source="(\w+)"\} (\S+)$', text, re.MULTILINE
        ):
            served[m.group(1)] = served.get(m.group(1), 0.0) + float(m.group(2))
    return served


@dataclass
class DataDirCheck:
    problems: list[str] = field(default_factory=list)
    blobs: int = 0
    manifests: int = 0


def check_data_dir(name: str, data: Path, metrics: str, cache_limit: int | None) -> DataDirCheck:
    """No orphans (partial/ and tmp/ empty, no ``*.tmp``), blobs/ exactly the cache's index
    and within ``cache_limit``, every cached blob and stored manifest hashing to its name."""
    out = DataDirCheck()
    for sub in ("partial", "tmp"):
        left = sorted(p.name for p in (data / sub).iterdir())
        if left:
            out.problems.append(f"{name}: orphan files in {sub}/: {left[:5]}")
    stray = sorted(p.name for p in data.rglob("*.tmp"))
    if stray:
        out.problems.append(f"{name}: stray .tmp files: {stray[:5]}")
    total = 0
    for p in (data / "blobs" / "sha256").iterdir():
        total += p.stat().st_size
        if hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            out.problems.append(f"{name}: cached blob {p.name} does not verify")
        out.blobs += 1
    m = re.search(r"^layerswarm_cache_bytes (\S+)$", metrics, re.MULTILINE)
    indexed = float(m.group(1)) if m else -1.0
    if total != indexed:
        out.problems.append(f"{name}: blobs/ holds {total} bytes, the cache index {indexed}")
    if cache_limit is not None and total > cache_limit:
        out.problems.append(f"{name}: cache holds {total} bytes, over {cache_limit}")
    manifests = data / "manifests" / "sha256"
    for p in manifests.iterdir() if manifests.exists() else ():
        if p.suffix == ".type":
            continue
        if hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            out.problems.append(f"{name}: stored manifest {p.name} does not verify")
        out.manifests += 1
    return out
