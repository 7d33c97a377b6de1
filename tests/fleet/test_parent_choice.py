"""Relay parents chosen by the tracker (``--parent-choice tracker``), on separate hosts.

From the outside: each agent logs every parent it attached to, who chose it and how many
peers it asked for that blob; the upstream registry's access log counts what crossed the WAN.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest

from testbed.clients import compare_dir_with_image
from testbed.fleet import Fleet
from tests.fleet.conftest import FleetFactory
from tests.fleet.test_p2p import logs

pytestmark = [pytest.mark.integration, pytest.mark.netns]

MiB = 1 << 20
TRACKER_CHOICE = ("--parent-choice", "tracker")


def agent_id(fleet: Fleet, index: int) -> str:
    return (fleet.agents[index].data_dir / "agent-id").read_text().strip()


def attachments(fleet: Fleet, index: int, digest: str) -> list[dict[str, str]]:
    """Agent ``index``'s "following parent=..." lines for ``digest``, as fields."""
    proc = fleet.agents[index].proc
    assert proc is not None
    text = proc.stdout_path.read_text() + proc.stderr_path.read_text()
    out = []
    for line in text.splitlines():
        _, found, rest = line.partition("following parent=")
        if found and f"digest={digest}" in rest:
            out.append(dict(kv.split("=", 1) for kv in f"parent={rest}".split()))
    return out


def partial_bytes(fleet: Fleet, index: int, digest: str) -> int:
    path = fleet.agents[index].data_dir / "partial" / digest.replace(":", "-")
    return path.stat().st_size if path.exists() else 0


def wait_for_partial(fleet: Fleet, index: int, digest: str, size: int) -> None:
    deadline = time.monotonic() + 60
    while partial_bytes(fleet, index, digest) < size:
        assert time.monotonic() < deadline, logs(fleet)
        time.sleep(0.05)


def test_followers_attach_where_the_tracker_says_without_walking(fleet: FleetFactory) -> None:
    """Two followers of one holder ask at once: the tracker gives one the holder's slot and
    the other the first follower's, so each asks exactly one peer (walking, the second would
    have asked the busy holder as well)."""
    f = fleet(3, agent_rates={1: "24mbit"})
    image = f.push_image([8 * MiB])
    layer = image.layers[0].digest
    for i in (1, 2, 3):
        f.start_agent(i, extra=TRACKER_CHOICE)
    compare_dir_with_image(f.pull(1, image), image)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        dests = [pool.submit(f.pull, i, image) for i in (2, 3)]
        for d in dests:
            compare_dir_with_image(d.result(timeout=240), image)
    seen = {i: attachments(f, i, layer) for i in (2, 3)}
    assert all(len(s) == 1 for s in seen.values()), (seen, logs(f))
    for s in seen.values():
        assert (s[0]["chosen_by"], s[0]["asked"]) == ("tracker", "1"), (seen, logs(f))
    # One chain: the holder feeds one follower, that follower the other.
    holder = agent_id(f, 1)
    parents = (seen[2][0]["parent"], seen[3][0]["parent"])
    assert parents in [(holder, agent_id(f, 2)), (agent_id(f, 3), holder)], (seen, logs(f))
    assert f.registry is not None and f.registry.blob_fetches(layer) == 1, logs(f)


def test_dead_parent_chosen_by_the_tracker_is_replaced(fleet: FleetFactory) -> None:
    """The tracker places agent 3 below agent 2 (the holder's slot is agent 2's); agent 2
    dies mid-layer. Agent 3 reports it, the tracker takes it out of the tree, and agent 3
    resumes from the holder, at its offset, with the right bytes."""
    f = fleet(3, agent_rates={1: "8mbit"})
    image = f.push_image([12 * MiB])
    layer = image.layers[0].digest
    for i in (1, 2, 3):
        f.start_agent(i, extra=TRACKER_CHOICE)
    compare_dir_with_image(f.pull(1, image), image)
    holder, doomed = agent_id(f, 1), agent_id(f, 2)
    first = concurrent.futures.ThreadPoolExecutor(1)
    second = concurrent.futures.ThreadPoolExecutor(1)
    try:
        first.submit(f.pull, 2, image, check=False)
        wait_for_partial(f, 2, layer, 1 * MiB)
        pulled = second.submit(f.pull, 3, image)
        wait_for_partial(f, 3, layer, 512 << 10)
        assert [a["parent"] for a in attachments(f, 3, layer)] == [doomed], logs(f)
        proc = f.agents[2].proc
        assert proc is not None and proc.pid is not None
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no goodbye to anyone
        compare_dir_with_image(pulled.result(timeout=240), image)
    finally:
        first.shutdown(wait=True)
        second.shutdown(wait=True)
    seen = attachments(f, 3, layer)
    assert [(a["parent"], a["chosen_by"]) for a in seen] == [
        (doomed, "tracker"),
        (holder, "tracker"),
    ], (seen, logs(f))
    assert int(seen[1]["offset"]) > 0, seen
    assert f.tracker is not None and "parent voided" in f.tracker.log_tail(200), logs(f)
    assert f.registry is not None and f.registry.blob_fetches(layer) == 1, logs(f)
