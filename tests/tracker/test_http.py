"""The tracker's HTTP API on a real socket: auth, input errors, leases, webhooks, metrics."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from core.trackerclient import HttpTrackerClient
from core.trackererrors import Forbidden, TrackerUnavailable, Unauthorized, UnknownAgent
from core.wire import Counters
from tests.tracker.conftest import TOKEN, AppFactory, new_key
from tests.tracker.helpers import agent, b64, digest_of
from tracker.clock import ManualClock
from tracker.config import TrackerConfig
from tracker.store import MemoryStore

D = digest_of("http-layer")
Client = TestClient[web.Request, web.Application]


def headers(key: str | None = None, token: str = TOKEN) -> dict[str, str]:
    out = {"Authorization": f"Bearer {token}"}
    if key is not None:
        out["X-Layerswarm-Agent-Key"] = key
    return out


async def register(c: Client, agent_id: str, key: str, **kw: Any) -> None:
    resp = await c.post(
        f"/v1/agents/{agent_id}/heartbeat",
        json=agent(agent_id, **kw).to_json(),
        headers=headers(key),
    )
    assert resp.status == 200, await resp.text()


async def lookup(c: Client, agent_id: str, key: str, digest: str = D) -> dict[str, Any]:
    resp = await c.post(
        f"/v1/agents/{agent_id}/lookup", json={"digest": digest}, headers=headers(key)
    )
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


@pytest.fixture
async def app(make_app: AppFactory, config: TrackerConfig, clock: ManualClock) -> Client:
    return await make_app(config, clock=clock, store=MemoryStore(), registry=CollectorRegistry())


async def test_auth(app: Client) -> None:
    key = new_key()
    body = agent("a1").to_json()
    resp = await app.post("/v1/agents/a1/heartbeat", json=body)
    assert resp.status == 401 and "error" in await resp.json()
    resp = await app.post(
        "/v1/agents/a1/heartbeat", json=body, headers=headers(key, token="wrong" * 5)
    )
    assert resp.status == 401
    resp = await app.post("/v1/agents/a1/heartbeat", json=body, headers=headers(None))
    assert resp.status == 401
    await register(app, "a1", key)
    # Another process claiming the same id is refused and changes nothing.
    intruder = new_key()
    resp = await app.post(
        "/v1/agents/a1/heartbeat",
        json=agent("a1", zone="evil").to_json(),
        headers=headers(intruder),
    )
    assert resp.status == 403
    resp = await app.post("/v1/agents/a1/announce", json={"digest": D}, headers=headers(intruder))
    assert resp.status == 403
    fleet = await (await app.get("/v1/fleet", headers=headers())).json()
    assert [(a["agent_id"], a["zone"]) for a in fleet["agents"]] == [("a1", "")]
    resp = await app.post("/v1/agents/ghost/lookup", json={"digest": D}, headers=headers(key))
    assert resp.status == 404 and (await resp.json())["code"] == "unknown_agent"
    for path in ("/preheat", "/webhooks/distribution"):
        assert (await app.post(path, json={})).status == 401
    assert (await app.get(f"/v1/metainfo/{D}")).status == 401


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/agents/a1/announce", b"{not json"),
        ("/v1/agents/a1/announce", b"[1, 2]"),
        ("/v1/agents/a1/announce", b'{"digest": "sha256:abc"}'),
        ("/v1/agents/a1/announce", b'{"digest": "md5 nope"}'),
        (
            "/v1/agents/a1/announce",
            b'{"holdings": [{"digest": "sha256:' + b"a" * 64 + b'", "state": "lost"}]}',
        ),
        ("/v1/agents/a1/announce", b'{"holdings": "x"}'),
        ("/v1/agents/a1/lookup", b'{"digest": 5}'),
        ("/v1/agents/a1/heartbeat", b'{"address": "h", "peer_port": 99999}'),
        ("/v1/agents/a1/heartbeat", b'{"address": "h", "peer_port": 1, "role": "king"}'),
        (
            "/v1/agents/a1/heartbeat",
            b'{"address": "h", "peer_port": 1, "counters": {"peer_bytes": -1}}',
        ),
        (
            "/v1/agents/a1/announce",
            b'{"digest": "' + D.encode() + b'", "pad": "' + b"x" * (70 << 10) + b'"}',
        ),
    ],
)
async def test_bad_input_is_4xx_and_changes_nothing(app: Client, path: str, body: bytes) -> None:
    key = new_key()
    await register(app, "a1", key)
    before = await (await app.get("/v1/fleet", headers=headers())).json()
    resp = await app.post(path, data=body, headers=headers(key))
    assert 400 <= resp.status < 500
    payload = await resp.json()
    assert isinstance(payload["error"], str) and "Traceback" not in payload["error"]
    after = await (await app.get("/v1/fleet", headers=headers())).json()
    assert after == before
    reply = await lookup(app, "a1", key)
    assert reply["peers"] == []


async def test_unknown_route_and_method_are_json(app: Client) -> None:
    resp = await app.get("/nope")
    assert resp.status == 404 and "error" in await resp.json()
    resp = await app.get("/v1/agents/a1/lookup")
    assert resp.status == 405 and "error" in await resp.json()


async def test_handout_order_over_http(app: Client) -> None:
    keys = {}
    for aid, kw in [
        ("asker", {"zone": "z1", "region": "r1"}),
        ("same-zone", {"zone": "z1", "region": "r1"}),
        ("same-region", {"zone": "z2", "region": "r1"}),
        ("seed", {"zone": "z9", "region": "r9", "role": "seed"}),
        ("rest", {"zone": "z8", "region": "r8"}),
    ]:
        keys[aid] = new_key()
        await register(app, aid, keys[aid], **kw)
    for aid in ("rest", "seed", "same-region", "same-zone"):
        resp = await app.post(
            f"/v1/agents/{aid}/announce",
            json={"digest": D, "state": "holding"},
            headers=headers(keys[aid]),
        )
        assert resp.status == 200
    reply = await lookup(app, "asker", keys["asker"])
    assert reply["action"] == "peers"
    assert [p["agent_id"] for p in reply["peers"]] == ["same-zone", "same-region", "seed", "rest"]


async def test_500_concurrent_cold_lookups_one_lease_per_region(app: Client) -> None:
    keys = {f"eu{i}": new_key() for i in range(500)}
    keys["us0"] = new_key()
    keys["us1"] = new_key()
    sem = asyncio.Semaphore(100)

    async def reg(aid: str) -> None:
        async with sem:
            await register(app, aid, keys[aid], region=aid[:2])

    await asyncio.gather(*(reg(a) for a in keys))
    eu = [a for a in keys if a.startswith("eu")]
    replies = await asyncio.gather(*(lookup(app, a, keys[a]) for a in eu))
    actions = [r["action"] for r in replies]
    assert actions.count("fetch") == 1 and actions.count("wait") == 499
    holder = eu[actions.index("fetch")]
    assert {r["lease_holder"] for r in replies} == {holder}
    us = await asyncio.gather(*(lookup(app, a, keys[a]) for a in ("us0", "us1")))
    assert sorted(r["action"] for r in us) == ["fetch", "wait"]


async def test_lease_takeover_over_http(app: Client, clock: ManualClock) -> None:
    k1, k2 = new_key(), new_key()
    await register(app, "a1", k1)
    await register(app, "a2", k2)
    assert (await lookup(app, "a1", k1))["action"] == "fetch"
    assert (await lookup(app, "a2", k2))["action"] == "wait"
    clock.advance(20)
    await register(app, "a2", k2)  # a1 stays silent
    clock.advance(11)
    assert (await lookup(app, "a2", k2))["action"] == "fetch"
    # a1 is gone: its requests are refused until it registers again.
    resp = await app.post("/v1/agents/a1/announce", json={"digest": D}, headers=headers(k1))
    assert resp.status == 404


async def test_metainfo_over_http(app: Client) -> None:
    key = new_key()
    await register(app, "a1", key)
    seg = {
        "offset": 0,
        "length": 10,
        "info_hash": "ab" * 20,
        "torrent": b64(b"d4:infoe"),
        "total_size": 10,
    }
    hdrs = {**headers(key), "X-Layerswarm-Agent-Id": "a1"}
    resp = await app.put(f"/v1/metainfo/{D}/0", json=seg, headers=hdrs)
    assert resp.status == 200 and (await resp.json())["complete"] is True
    # A conflicting publish replaces the metainfo (no first writer locks a digest) ...
    resp = await app.put(f"/v1/metainfo/{D}/0", json={**seg, "info_hash": "cd" * 20}, headers=hdrs)
    assert resp.status == 200
    got = await (await app.get(f"/v1/metainfo/{D}", headers=headers())).json()
    assert got["segments"][0]["info_hash"] == "cd" * 20
    # ... and so does the next one.
    resp = await app.put(f"/v1/metainfo/{D}/0", json=seg, headers=hdrs)
    assert resp.status == 200
    resp = await app.put(f"/v1/metainfo/{D}/1", json={**seg, "torrent": "***"}, headers=hdrs)
    assert resp.status == 400
    resp = await app.put(f"/v1/metainfo/{D}/x", json=seg, headers=hdrs)
    assert resp.status == 400
    resp = await app.put(
        f"/v1/metainfo/{D}/0",
        json=seg,
        headers={**headers(new_key()), "X-Layerswarm-Agent-Id": "a1"},
    )
    assert resp.status == 403
    got = await (await app.get(f"/v1/metainfo/{D}", headers=headers())).json()
    assert got["segments"] == [
        {"index": 0, "offset": 0, "length": 10, "info_hash": "ab" * 20, "torrent": b64(b"d4:infoe")}
    ]
    assert (await app.get(f"/v1/metainfo/{digest_of('none')}", headers=headers())).status == 404


async def test_webhook_creates_preheat_and_status_aggregates(app: Client) -> None:
    envelope = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "team/app",
                    "tag": "v1",
                    "digest": D,
                },
                "request": {"host": "127.0.0.1:5000"},
            },
            {
                "action": "push",
                "target": {
                    "mediaType": "application/octet-stream",
                    "repository": "team/app",
                    "digest": D,
                },
                "request": {"host": "127.0.0.1:5000"},
            },
            {
                "action": "pull",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "x",
                    "tag": "y",
                },
                "request": {"host": "h"},
            },
        ]
    }
    resp = await app.post("/webhooks/distribution", json=envelope, headers=headers())
    assert resp.status == 200
    jobs = (await resp.json())["jobs"]
    assert [j["image"] for j in jobs] == ["127.0.0.1:5000/team/app:v1"]
    job_id = jobs[0]["id"]

    ks, kp = new_key(), new_key()
    await register(app, "seed1", ks, role="seed")
    await register(app, "peer1", kp)
    tasks = await (await app.get("/v1/agents/seed1/tasks", headers=headers(ks))).json()
    assert [j["id"] for j in tasks["jobs"]] == [job_id]
    assert (await (await app.get("/v1/agents/peer1/tasks", headers=headers(kp))).json())[
        "jobs"
    ] == []
    status = await (await app.get(f"/preheat/{job_id}", headers=headers())).json()
    assert status["state"] == "pending"
    report = {"state": "running", "layers": [{"digest": D, "size": 100, "done_bytes": 30}]}
    resp = await app.post(f"/v1/agents/seed1/preheat/{job_id}", json=report, headers=headers(ks))
    assert resp.status == 200
    status = await (await app.get(f"/preheat/{job_id}", headers=headers())).json()
    assert status["state"] == "running" and status["layers"][0]["done_bytes"] == 30
    report = {"state": "done", "layers": [{"digest": D, "size": 100, "done_bytes": 100}]}
    await app.post(f"/v1/agents/seed1/preheat/{job_id}", json=report, headers=headers(ks))
    status = await (await app.get(f"/preheat/{job_id}", headers=headers())).json()
    assert status["state"] == "done" and status["layers"][0]["agents_done"] == 1
    assert (await app.get("/preheat/nope", headers=headers())).status == 404

    resp = await app.post(
        "/preheat", json={"image": "127.0.0.1:5000/x:1", "scope": "all"}, headers=headers()
    )
    assert resp.status == 201 and len((await resp.json())["id"]) == 16
    assert (
        await app.post("/preheat", json={"image": "x", "scope": "some"}, headers=headers())
    ).status == 400


async def test_metrics_and_page(app: Client) -> None:
    k1, k2 = new_key(), new_key()
    await register(app, "a1", k1, counters=Counters(upstream_bytes=1000, peer_bytes=3000))
    await register(app, "s1", k2, role="seed", counters=Counters(upstream_bytes=0, peer_bytes=1000))
    await lookup(app, "a1", k1)
    text = await (await app.get("/metrics")).text()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert values[("layerswarm_fleet_upstream_bytes_total", ())] == 1000
    assert values[("layerswarm_fleet_peer_received_bytes_total", ())] == 4000
    assert values[("layerswarm_fleet_savings_ratio", ())] == 0.8
    assert values[("layerswarm_fleet_agents", (("role", "peer"),))] == 1
    assert values[("layerswarm_fleet_agents", (("role", "seed"),))] == 1
    assert values[("layerswarm_tracker_lookups_total", (("action", "fetch"),))] == 1
    key = (
        "layerswarm_tracker_requests_total",
        (("code", "200"), ("endpoint", "/v1/agents/{id}/lookup")),
    )
    assert values[key] == 1
    assert (await app.get("/")).status == 401
    basic = "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()
    assert (await app.get("/", headers={"Authorization": "Basic b3BzOndyb25n"})).status == 401
    page = await (await app.get("/", headers={"Authorization": basic})).text()
    assert (
        "<table" in page
        and "s1" in page
        and "80.0%" in page
        and "http" not in page.split("<body>")[1]
    )
    assert (await (await app.get("/healthz")).json()) == {"status": "ok"}


async def test_http_client_fails_over_between_replicas(
    make_app: AppFactory, config: TrackerConfig
) -> None:
    store = MemoryStore()
    app = await make_app(config, store=store, registry=CollectorRegistry())
    live = str(app.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        # The first URL refuses connections (nothing listens there any more).
        dead_app = await make_app(config, store=store, registry=CollectorRegistry())
        dead = str(dead_app.make_url("")).rstrip("/")
        await dead_app.close()
        client = HttpTrackerClient(f"{dead},{live}", TOKEN, "a1", new_key(), session, timeout=2.0)
        await client.heartbeat(agent("a1"))
        assert (await client.lookup(D)).action == "fetch"
        await client.announce(D, "holding", progress_bytes=5, total_bytes=5)
        other = HttpTrackerClient([live], TOKEN, "a1", new_key(), session)
        with pytest.raises(Forbidden):
            await other.heartbeat(agent("a1"))
        with pytest.raises(UnknownAgent):
            await HttpTrackerClient([live], TOKEN, "zz", new_key(), session).lookup(D)
        with pytest.raises(Unauthorized):
            await HttpTrackerClient([live], "wrong-token-123456", "a1", new_key(), session).lookup(
                D
            )
        assert await client.get_metainfo(D) is None
        nobody = HttpTrackerClient([dead], TOKEN, "a1", new_key(), session, timeout=1.0)
        with pytest.raises(TrackerUnavailable):
            await nobody.lookup(D)
