"""The libtorrent engine against real sessions on loopback (and one fault-injecting peer)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.p2p import pki
from agent.p2p.engine import (
    EngineClosed,
    FleetTLS,
    InvalidMetainfo,
    PeerFetchCorrupt,
    PeerFetchTimeout,
    PeerTransferError,
    SegmentTorrent,
)
from agent.p2p.libtorrent_impl import EngineOptions, LibtorrentEngine
from tests.p2p.conftest import EngineFactory
from tests.p2p.fake_peer import CorruptPeer

LOCAL = "127.0.0.1"


def _segment_file(directory: Path, name: str, size: int) -> tuple[Path, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path = directory / name
    path.write_bytes(data)
    return path, data


async def _publish(engine: LibtorrentEngine, path: Path, name: str) -> SegmentTorrent:
    seg = await engine.make_segment(path, name=name)
    await engine.seed(seg.metainfo, path)
    return seg


def _fleet_tls(ca: tuple[bytes, bytes], agent_id: str, trusted_ca: bytes | None = None) -> FleetTLS:
    key, csr = pki.generate_key_and_csr(agent_id)
    cert = pki.sign_csr(ca[0], ca[1], csr, days=1)
    return FleetTLS(ca_pem=trusted_ca or ca[0], cert_pem=cert, key_pem=key)


async def test_fetch_from_one_seed(make_engine: EngineFactory, tmp_path: Path) -> None:
    a, b = await make_engine(), await make_engine()
    src, data = _segment_file(tmp_path / "a", "seg", (3 << 20) + 4321)
    seg = await _publish(a, src, "layer-0")
    assert seg.length == len(data)

    dest = tmp_path / "b" / "seg-out"
    dest.parent.mkdir()
    await b.fetch(seg.metainfo, dest, [(LOCAL, a.peer_port)], stall_timeout=20)

    assert dest.read_bytes() == data
    assert not dest.with_name("seg-out.part").exists()
    assert b.has(seg.info_hash)
    a_stats, b_stats = await a.stats(), await b.stats()
    assert a_stats.uploaded_bytes >= len(data)
    assert b_stats.downloaded_bytes >= len(data)
    assert b_stats.failed_bytes == 0
    # A second fetch of a segment already here returns at once without touching the file.
    await b.fetch(seg.metainfo, dest, [], stall_timeout=1)
    # B now seeds it: a third engine can get it from B alone.
    c = await make_engine()
    dest_c = tmp_path / "c" / "seg"
    dest_c.parent.mkdir()
    await c.fetch(seg.metainfo, dest_c, [(LOCAL, b.peer_port)], stall_timeout=20)
    assert dest_c.read_bytes() == data


async def test_fetched_segments_are_seeded_at_once(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    """Our contract, not libtorrent's scheduling: a segment fetched while the layer is still
    being published is seeded by the fetcher at once, so a newcomer completes it from the
    fetcher alone after the publisher is gone."""
    a = await make_engine(upload_rate=1 << 20)
    b, d = await make_engine(), await make_engine()
    for name in ("b", "d"):
        (tmp_path / name).mkdir()
    originals: list[bytes] = []
    segments: list[SegmentTorrent] = []
    for i in range(4):
        path, data = _segment_file(tmp_path / "a", f"seg{i}", 1 << 20)
        originals.append(data)
        seg = await _publish(a, path, f"layer-seg{i}")
        segments.append(seg)
        await b.fetch(
            seg.metainfo, tmp_path / "b" / f"seg{i}", [(LOCAL, a.peer_port)], stall_timeout=30
        )
    await a.close()
    for i, seg in enumerate(segments):
        await d.fetch(
            seg.metainfo, tmp_path / "d" / f"seg{i}", [(LOCAL, b.peer_port)], stall_timeout=30
        )
        assert (tmp_path / "d" / f"seg{i}").read_bytes() == originals[i]
    assert (await b.stats()).uploaded_bytes >= 4 << 20


async def test_fleet_tls_swarm(make_engine: EngineFactory, tmp_path: Path) -> None:
    fleet = pki.generate_ca("fleet")
    other = pki.generate_ca("not-the-fleet")
    a = await make_engine(tls=_fleet_tls(fleet, "agent-a"))
    b = await make_engine(tls=_fleet_tls(fleet, "agent-b"))
    # Trusts the fleet CA but holds a cert from another CA: an outsider with a stolen
    # metainfo and an address, the strongest position short of a fleet cert.
    intruder = await make_engine(tls=_fleet_tls(other, "intruder", trusted_ca=fleet[0]))
    plain = await make_engine()
    assert a.ssl_listen_port is not None and a.peer_port == a.ssl_listen_port

    src, data = _segment_file(tmp_path / "a", "seg", 2 << 20)
    seg = await _publish(a, src, "tls-seg")
    dest = tmp_path / "b" / "seg"
    dest.parent.mkdir()
    await b.fetch(seg.metainfo, dest, [(LOCAL, a.peer_port)], stall_timeout=20)
    assert dest.read_bytes() == data

    lost = tmp_path / "intruder" / "seg"
    lost.parent.mkdir()
    with pytest.raises(PeerFetchTimeout):
        await intruder.fetch(
            seg.metainfo, lost, [(LOCAL, a.peer_port), (LOCAL, a.listen_port)], stall_timeout=3
        )
    assert not lost.exists()
    assert (await intruder.stats()).downloaded_bytes == 0
    # An engine without fleet TLS refuses the swarm outright instead of leaking into it.
    with pytest.raises(InvalidMetainfo):
        await plain.fetch(
            seg.metainfo, tmp_path / "plain-seg", [(LOCAL, a.peer_port)], stall_timeout=3
        )
    # And a fleet engine refuses plain torrents, which anyone could join.
    plain_src, _ = _segment_file(tmp_path / "p", "seg", 1 << 20)
    plain_seg = await plain.make_segment(plain_src, name="plain")
    with pytest.raises(InvalidMetainfo):
        await a.seed(plain_seg.metainfo, plain_src)


async def test_corrupt_peer_is_banned_and_honest_peer_completes(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    # A slow honest seed, so the corrupt peer is surely asked for some pieces.
    a = await make_engine(upload_rate=1 << 20)
    b = await make_engine()
    src, data = _segment_file(tmp_path / "a", "seg", 2 << 20)
    seg = await _publish(a, src, "victim")
    fake = CorruptPeer(seg.info_hash, num_pieces=-(-len(data) // (256 << 10)))
    await fake.start()
    try:
        reported: list[tuple[str, int]] = []
        dest = tmp_path / "b" / "seg"
        dest.parent.mkdir()
        await b.fetch(
            seg.metainfo,
            dest,
            [fake.address, (LOCAL, a.peer_port)],
            stall_timeout=30,
            on_bad_peer=lambda ip, port: reported.append((ip, port)),
        )
        assert dest.read_bytes() == data
        assert fake.blocks_sent > 0
        assert reported == [fake.address]
        assert (await b.stats()).failed_bytes > 0
    finally:
        await fake.close()


async def test_only_corrupt_peers_fails_without_a_file(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    producer, b = await make_engine(), await make_engine()
    src, _ = _segment_file(tmp_path / "a", "seg", 1 << 20)
    seg = await producer.make_segment(src, name="never-served")  # made, not seeded
    fake = CorruptPeer(seg.info_hash, num_pieces=4)
    await fake.start()
    try:
        reported: list[tuple[str, int]] = []
        dest = tmp_path / "b" / "seg"
        dest.parent.mkdir()
        with pytest.raises(PeerFetchCorrupt) as err:
            await b.fetch(
                seg.metainfo,
                dest,
                [fake.address],
                stall_timeout=3,
                on_bad_peer=lambda ip, port: reported.append((ip, port)),
            )
        assert err.value.bad_peers == (fake.address,)
        assert reported == [fake.address]
        assert list(dest.parent.iterdir()) == []
        assert not b.has(seg.info_hash)
    finally:
        await fake.close()


async def test_cancelled_fetch_leaves_no_partial_file(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    a, b = await make_engine(), await make_engine()
    src, _ = _segment_file(tmp_path / "a", "seg", 1 << 20)
    seg = await a.make_segment(src, name="unserved")  # no seed anywhere: the fetch hangs
    dest = tmp_path / "b" / "seg"
    dest.parent.mkdir()
    task = asyncio.create_task(
        b.fetch(seg.metainfo, dest, [(LOCAL, a.peer_port)], stall_timeout=60)
    )
    for _ in range(100):
        if b.has(seg.info_hash):
            break
        await asyncio.sleep(0.02)
    assert b.has(seg.info_hash)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(dest.parent.iterdir()) == []
    assert not b.has(seg.info_hash)


async def test_stop_forgets_and_optionally_deletes(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    a = await make_engine()
    src, _ = _segment_file(tmp_path / "a", "seg", 1 << 20)
    seg = await _publish(a, src, "evict-me")
    await a.seed(seg.metainfo, src)  # idempotent
    assert (await a.stats()).torrents == 1
    await a.stop(seg.info_hash)
    assert not a.has(seg.info_hash) and src.exists()
    await a.seed(seg.metainfo, src)
    await a.stop(seg.info_hash, delete_file=True)
    assert not src.exists()
    await a.stop(seg.info_hash)  # unknown: ignored


async def test_seed_rejects_a_file_of_the_wrong_size(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    a = await make_engine()
    src, _ = _segment_file(tmp_path / "a", "seg", 1 << 20)
    seg = await a.make_segment(src, name="x")
    with src.open("ab") as f:
        f.write(b"extra")
    with pytest.raises(InvalidMetainfo):
        await a.seed(seg.metainfo, src)


async def test_concurrent_fetches_of_one_segment_share_it(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    a, b = await make_engine(), await make_engine()
    src, data = _segment_file(tmp_path / "a", "seg", 2 << 20)
    seg = await _publish(a, src, "shared")
    dest = tmp_path / "b" / "seg"
    dest.parent.mkdir()
    peers = [(LOCAL, a.peer_port)]
    await asyncio.gather(
        b.fetch(seg.metainfo, dest, peers, stall_timeout=20),
        b.fetch(seg.metainfo, dest, peers, stall_timeout=20),
    )
    assert dest.read_bytes() == data
    with pytest.raises(PeerTransferError):
        await b.fetch(seg.metainfo, tmp_path / "b" / "elsewhere", peers, stall_timeout=5)


async def test_close_fails_pending_fetches(make_engine: EngineFactory, tmp_path: Path) -> None:
    a, b = await make_engine(), await make_engine()
    src, _ = _segment_file(tmp_path / "a", "seg", 1 << 20)
    seg = await a.make_segment(src, name="never-seeded")
    (tmp_path / "b").mkdir()
    task = asyncio.create_task(
        b.fetch(seg.metainfo, tmp_path / "b" / "seg", [(LOCAL, a.peer_port)], stall_timeout=60)
    )
    for _ in range(100):
        if b.has(seg.info_hash):
            break
        await asyncio.sleep(0.02)
    await b.close()
    with pytest.raises(EngineClosed):
        await task
    with pytest.raises(EngineClosed):
        await b.stats()
    await b.close()  # idempotent


async def test_start_fails_on_a_taken_port(make_engine: EngineFactory) -> None:
    a = await make_engine()
    clash = LibtorrentEngine(EngineOptions(listen=(LOCAL, a.listen_port)))
    with pytest.raises(PeerTransferError):
        await clash.start()
    with pytest.raises(EngineClosed):
        _ = clash.listen_port
