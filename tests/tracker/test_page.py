"""The fleet page in a real browser: a running tracker with agents in two regions mid-rollout,
loaded by headless Chromium at a desktop and at a phone width, asserted on the rendered DOM.

The tracker is the real process. The agents talk to it with the agents' own HTTP client
(``HttpTrackerClient``): heartbeats with their byte counts, holdings, lookups and preheat
progress, so the page shows a rollout caught half-way, which real transfers on loopback
finish too fast to photograph. ``LAYERSWARM_UPDATE_SCREENSHOT=1`` also writes the desktop
screenshot to docs/img/fleet-page.png.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import aiohttp
import pytest

from core.trackerclient import HttpTrackerClient
from core.wire import AgentInfo, Announcement, Counters, LayerProgress
from testbed.browser import Browser
from testbed.procs import Proc, free_port, wait_for_http

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "docs" / "img" / "fleet-page.png"
MiB = 1 << 20
IMAGE = "registry.example.com/team/app:2.0"
LAYERS = [
    ("sha256:" + hashlib.sha256(b"layer-a").hexdigest(), 48 * MiB),
    ("sha256:" + hashlib.sha256(b"layer-b").hexdigest(), 12 * MiB),
]


@dataclass
class Fleet:
    url: str
    token: str
    clients: dict[str, HttpTrackerClient]
    infos: dict[str, AgentInfo]


async def beat(fleet: Fleet, agent_id: str, **counts: int) -> None:
    info = replace(fleet.infos[agent_id], counters=Counters(**counts))
    fleet.infos[agent_id] = info
    await fleet.clients[agent_id].heartbeat(info)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "layerswarm", "tracker", "--listen", f"127.0.0.1:{port}"]
    # agent-ttl 6s: the chart samples once per heartbeat interval (2 s), so the test needs
    # only a few seconds to draw a line; every agent beats again before it would expire.
    argv += ["--token-file", str(token_file), "--agent-ttl", "6s"]
    tracker = Proc(argv, tmp_path / "logs", name="tracker").start()
    try:
        wait_for_http(f"{url}/healthz", timeout=30, proc=tracker)
        async with aiohttp.ClientSession() as session:
            places: dict[str, tuple[str, str, Literal["peer", "seed"]]] = {
                "seed-eu-1": ("eu-west", "eu-west-1a", "seed"),
                "node-eu-17": ("eu-west", "eu-west-1b", "peer"),
                "node-us-3": ("us-east", "us-east-1a", "peer"),
            }
            clients, infos = {}, {}
            for i, (aid, (region, zone, role)) in enumerate(places.items()):
                clients[aid] = HttpTrackerClient(url, token, aid, secrets.token_hex(16), session)
                infos[aid] = AgentInfo(
                    agent_id=aid,
                    address=f"10.0.0.{i + 1}",
                    peer_port=6881,
                    zone=zone,
                    region=region,
                    role=role,
                )
            yield Fleet(url, token, clients, infos)
    finally:
        tracker.stop()


# Per round: (seed upstream, seed uploaded, eu peer's bytes from peers, us upstream) in MiB.
ROUNDS = {1: (20, 5, 5, 10), 2: (40, 20, 15, 15), 3: (60, 40, 30, 20)}


async def counts(fleet: Fleet, round_: int) -> None:
    seed_up, seed_out, eu_peer, us_up = (n * MiB for n in ROUNDS[round_])
    await beat(fleet, "seed-eu-1", upstream_bytes=seed_up, uploaded_bytes=seed_out)
    await beat(fleet, "node-eu-17", peer_bytes=eu_peer)
    await beat(fleet, "node-us-3", upstream_bytes=us_up)


async def mid_rollout(fleet: Fleet, session: aiohttp.ClientSession) -> str:
    """Two regions, a preheat of IMAGE half done, counters moving between page samples."""
    headers = {"Authorization": f"Bearer {fleet.token}"}
    async with session.post(
        f"{fleet.url}/preheat", json={"image": IMAGE, "scope": "all"}, headers=headers
    ) as resp:
        assert resp.status == 201, await resp.text()
        job_id = str((await resp.json())["id"])
    await counts(fleet, 1)
    seed, peer, us = (fleet.clients[a] for a in ("seed-eu-1", "node-eu-17", "node-us-3"))
    await seed.announce_many([Announcement(d, "holding", s, s) for d, s in LAYERS])
    await peer.announce(LAYERS[0][0], "fetching", progress_bytes=30 * MiB, total_bytes=LAYERS[0][1])
    await us.announce(LAYERS[0][0], "fetching", progress_bytes=20 * MiB, total_bytes=LAYERS[0][1])
    for client in (peer, us):
        await client.lookup(LAYERS[0][0])
    await seed.report_preheat(job_id, [LayerProgress(d, s, s) for d, s in LAYERS], "done")
    await peer.report_preheat(
        job_id, [LayerProgress(LAYERS[0][0], LAYERS[0][1], 30 * MiB)], "running"
    )
    await us.report_preheat(
        job_id, [LayerProgress(LAYERS[0][0], LAYERS[0][1], 20 * MiB)], "running"
    )
    return job_id


async def test_fleet_page_during_a_rollout(fleet: Fleet, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        job_id = await mid_rollout(fleet, session)
        async with Browser(tmp_path / "chromium") as browser:
            basic = ("fleet", fleet.token)
            await browser.open(fleet.url + "/", width=1400, height=900, basic=basic)
            empty = await browser.evaluate("document.querySelector('#chart-empty') !== null")
            assert empty, "one sample only: the chart waits for a second"
            # The chart takes one sample per heartbeat interval (2 s here): two more rounds
            # of counts, each a little over an interval later, give it a line to draw.
            for round_ in (2, 3):
                await asyncio.sleep(2.2)
                await counts(fleet, round_)
                await browser.open(fleet.url + "/", width=1400, height=900, basic=basic)
            lines = await browser.evaluate(
                "[...document.querySelectorAll('#chart-svg polyline')].map(p =>"
                " p.getAttribute('points').split(' ').length)"
            )
            assert lines == [2, 2], lines  # three samples: two rates per line

            # The savings, big and per region, as the tracker computed them.
            total = await browser.evaluate(
                "document.querySelector('#savings-total .value').textContent"
            )
            assert total == f"{100 * 30 / (30 + 80):.1f}%"
            regions = await browser.evaluate(
                "[...document.querySelectorAll('.card.region')].map(c => c.dataset.region)"
            )
            assert regions == ["eu-west", "us-east"]
            eu = await browser.evaluate(
                "document.querySelector('.card.region[data-region=\"eu-west\"] .value').textContent"
            )
            assert eu == f"{100 * 30 / (30 + 60):.1f}%"

            # The rollout in progress, by image name, with per-layer progress.
            job = await browser.evaluate(
                f"(() => {{ const j = document.querySelector('.job[data-job=\"{job_id}\"]');"
                " return {state: j.dataset.state, image: j.querySelector('.image').textContent,"
                " rows: [...j.querySelectorAll('tbody tr')].map(r => [...r.cells].map("
                "c => c.textContent)), bars: [...j.querySelectorAll('tbody .bar span')].map("
                "s => s.style.width)}; })()"
            )
            assert job["state"] == "running"
            assert job["image"] == "team/app:2.0"
            sizes = {row[0].split(":")[1][:12]: row[1] for row in job["rows"]}
            assert sizes == {
                LAYERS[0][0].split(":")[1][:12]: "48.0 MiB",
                LAYERS[1][0].split(":")[1][:12]: "12.0 MiB",
            }
            # Layer a: 48 + 30 + 20 MiB of 3 x 48 MiB; layer b: the seed's 12 of 3 x 12.
            assert sorted(job["bars"]) == sorted([f"{100 * 98 / 144:.1f}%", f"{100 / 3:.1f}%"]), job

            # Layers in demand by image and size, not as bare digests.
            demand = await browser.evaluate(
                "[...document.querySelectorAll('#images tbody tr')].map(r =>"
                " [...r.cells].map(c => c.textContent))"
            )
            assert demand[0][0].startswith("team/app:2.0") and demand[0][2] == "48.0 MiB", demand

            # Agents with role, last seen and bytes in and out.
            agents = await browser.evaluate(
                "[...document.querySelectorAll('#agents tbody tr')].map(r =>"
                " [...r.cells].map(c => c.textContent))"
            )
            assert [a[0] for a in agents] == ["node-eu-17", "node-us-3", "seed-eu-1"]
            seed = agents[2]
            assert seed[2] == "seed" and seed[3].endswith("s ago"), seed
            assert seed[5] == "60.0 MiB" and seed[6] == "40.0 MiB", seed

            refresh = await browser.evaluate(
                "document.querySelector('meta[http-equiv=refresh]').content"
            )
            assert int(refresh) > 0

            # Nothing wider than the window: usable at 1400 px and on a phone.
            for width in (1400, 390):
                await browser.open(fleet.url + "/", width=width, height=900, basic=basic)
                wide = await browser.evaluate(
                    "document.documentElement.scrollWidth <= window.innerWidth"
                )
                assert wide, f"the page scrolls sideways at {width} px"
                await browser.screenshot(tmp_path / f"fleet-{width}.png")

    assert (tmp_path / "fleet-1400.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LAYERSWARM_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "fleet-1400.png", SCREENSHOT)


def test_the_screenshot_of_the_fleet_page_is_kept() -> None:
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
