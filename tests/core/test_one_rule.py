"""One rule, one place: the agent, the tracker and the operator commands agree on what a digest
is and on what a fleet token is, because each of them asks core."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import DigestInvalid
from agent.oci import parse_digest
from core.trackererrors import InvalidRequest
from core.wire import check_digest
from tests.cli.conftest import layerswarm

DIGESTS = [
    ("sha256:" + "a" * 64, True),
    ("sha512:" + "b" * 128, True),
    # Valid by the grammar, but not an algorithm the OCI image spec registers.
    ("sha384:" + "c" * 96, False),
    ("blake3:" + "d" * 64, False),
    ("sha256:" + "A" * 64, False),
    ("sha256:" + "a" * 63, False),
    ("sha256", False),
    ("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", False),
]


@pytest.mark.parametrize(("raw", "accepted"), DIGESTS)
def test_agent_and_tracker_accept_the_same_digests(raw: str, accepted: bool) -> None:
    try:
        parse_digest(raw)
        agent_accepts = True
    except DigestInvalid:
        agent_accepts = False
    try:
        check_digest(raw)
        tracker_accepts = True
    except InvalidRequest:
        tracker_accepts = False
    assert (agent_accepts, tracker_accepts) == (accepted, accepted)


AGENT = "agent --data-dir {tmp}/data --upstream up.test:5000=http://127.0.0.1:9 --tracker "
AGENT += "http://127.0.0.1:9 --tracker-token-file {token} --listen 127.0.0.1:0 "
AGENT += "--peer-listen 127.0.0.1:0"
READERS = {
    # The agent used to accept any non-empty token.
    "agent": AGENT,
    "tracker": "tracker --listen 127.0.0.1:0 --token-file {token}",
    "status": "status --tracker http://127.0.0.1:9 --tracker-token-file {token}",
}


@pytest.mark.parametrize("command", READERS.values(), ids=READERS.keys())
def test_a_short_fleet_token_is_refused_by_every_reader(tmp_path: Path, command: str) -> None:
    token = tmp_path / "token"
    token.write_text("fifteen-chars!!\n")
    res = layerswarm(*command.format(tmp=tmp_path, token=token).split(), timeout=30)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith("token must be at least 16 characters"), lines
