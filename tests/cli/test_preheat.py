"""``layerswarm preheat`` against a real tracker, a real seed agent and a real registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.conftest import Node, layerswarm
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration


def test_preheat_pulls_every_blob_onto_the_seed_once(
    node: Node, image_factory: ImageFactory
) -> None:
    image = image_factory("cli/app", "v1", layers=(300 * 1024, 200 * 1024), registry=node.registry)
    res = layerswarm(
        "preheat", image.ref, *node.tracker_args, "--timeout", "60s", "--poll-interval", "200ms"
    )
    out = res.stdout
    assert res.returncode == 0, (res.stdout, res.stderr, node.logs())
    assert "preheat job" in out and "created (scope seeds)" in out
    # The summary names every blob (layers and config) with its size, and the agents' tally.
    summary = out[out.index(f"{image.ref}: done in") :]
    for digest in image.blob_digests:
        assert digest in summary, summary
    assert "2 layers + config" in summary and "agents 1 done, 0 failed" in summary, summary
    # Where the bytes came from, and on which agents the image is now.
    assert "from upstream" in summary and "done on: " in summary, summary
    # Manifest order, config first: not the digests' order.
    listed = [line.split()[0] for line in summary.splitlines()[1:4]]
    assert listed == [image.config_digest, *(layer.digest for layer in image.layers)], summary
    # Not a TTY: plain lines, no cursor movement.
    assert "\x1b[" not in out
    # The seed really fetched each blob from the upstream, exactly once.
    for digest in image.blob_digests:
        assert node.registry.blob_fetches(digest) == 1, node.logs()


def test_preheat_without_wait_only_creates_jobs(node: Node, image_factory: ImageFactory) -> None:
    a = image_factory("cli/a", "v1", layers=(64 * 1024,), registry=node.registry)
    b = image_factory("cli/b", "v1", layers=(64 * 1024,), registry=node.registry)
    res = layerswarm("preheat", a.ref, b.ref, "--no-wait", *node.tracker_args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("preheat job") == 2
    assert "done in" not in res.stdout


def test_preheat_times_out_when_no_agent_is_in_scope(node: Node) -> None:
    res = layerswarm(
        "preheat",
        f"{node.registry.host_port}/nothing/here:v1",
        *node.tracker_args,
        "--zone",
        "nowhere",
        "--timeout",
        "1500ms",
        "--poll-interval",
        "200ms",
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "timed out" in res.stderr
    assert "no live agent is in this job's scope" in res.stdout


def test_preheat_failed_job_exits_1_with_the_agents_reason(node: Node) -> None:
    # The registry has no such repository: the seed reports the job failed.
    res = layerswarm(
        "preheat",
        f"{node.registry.host_port}/missing/image:v1",
        *node.tracker_args,
        "--timeout",
        "60s",
        "--poll-interval",
        "200ms",
    )
    assert res.returncode == 1, (res.stdout, res.stderr, node.logs())
    assert ": failed in" in res.stdout
    assert "agents 0 done, 1 failed" in res.stdout
    failed_lines = [line for line in res.stdout.splitlines() if line.startswith("  agent ")]
    assert failed_lines and all(" failed: " in line for line in failed_lines), res.stdout


def test_preheat_wrong_token_is_a_config_error(node: Node, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-fleet-token-at-all\n")
    res = layerswarm(
        "preheat", "x/y:z", "--tracker", node.tracker_url, "--tracker-token-file", str(wrong)
    )
    assert res.returncode == 2
    assert "refused the token" in res.stderr and str(wrong) in res.stderr


def test_preheat_settings_come_from_the_environment(
    node: Node, image_factory: ImageFactory
) -> None:
    image = image_factory("cli/env", "v1", layers=(64 * 1024,), registry=node.registry)
    env = {
        **os.environ,
        "LAYERSWARM_TRACKER": node.tracker_url,
        "LAYERSWARM_TRACKER_TOKEN_FILE": str(node.token_file),
        # The agent's zone variable must not narrow an operator's job.
        "LAYERSWARM_ZONE": "nowhere",
    }
    res = layerswarm("preheat", image.ref, "--timeout", "60s", "--poll-interval", "200ms", env=env)
    assert res.returncode == 0, (res.stdout, res.stderr, node.logs())


def test_preheat_usage_errors_exit_2(tmp_path: Path) -> None:
    res = layerswarm("preheat", "x/y:z")
    assert res.returncode == 2 and "tracker is required" in res.stderr
    res = layerswarm(
        "preheat",
        "x/y:z",
        "--tracker",
        "http://127.0.0.1:1",
        "--tracker-token-file",
        str(tmp_path / "absent"),
    )
    assert res.returncode == 2 and "tracker-token-file" in res.stderr


def test_preheat_with_no_agent_in_scope_ends_and_says_which_scope(node: Node) -> None:
    # The tracker ends such a job after two agent TTLs (6 s here), well before --timeout.
    res = layerswarm(
        "preheat",
        f"{node.registry.host_port}/nothing/here:v1",
        *node.tracker_args,
        "--region",
        "mars-1",
        "--timeout",
        "60s",
        "--poll-interval",
        "200ms",
    )
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "timed out" not in res.stderr
    assert ": no_agents in " in res.stdout, res.stdout
    assert (
        "no live agent in scope (seeds, or every agent when no seed is live, in region mars-1)"
        in (res.stdout)
    )
