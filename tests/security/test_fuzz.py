"""A fuzz pass over the agent's registry API and the tracker's API: for
any client input, no 5xx, and the process stays up with bounded memory.

Both daemons run as operators run them (the CLI, real processes); the agent mirrors a real
docker-registry holding one image, so well-formed requests reach real upstream answers. The
budget is fixed (a few hundred examples, derandomized so the suite is repeatable) and each
request is bounded in time. Run with ``HYPOTHESIS_PROFILE=explore`` for a random, longer pass.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.images import Image
from testbed.procs import Proc, free_port, wait_for_http
from testbed.registry import Registry
from tests.agent.conftest import AgentProcFactory
from tests.conftest import ImageFactory

pytestmark = pytest.mark.integration

_EXPLORE = os.environ.get("HYPOTHESIS_PROFILE") == "explore"
BUDGET = settings(
    max_examples=2000 if _EXPLORE else 250,
    derandomize=not _EXPLORE,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Growth of the daemon's resident memory over the whole pass that still counts as bounded.
MAX_RSS_GROWTH = 150 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def send(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            # Any text, as the bytes a client could put on the wire (no line breaks).
            raw = value.encode("utf-8").decode("latin-1").replace("\r", "").replace("\n", "")
            conn.putheader(name, raw)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(64 << 10)
    finally:
        conn.close()


def upstreams_own_failure(status: int, body: bytes) -> bool:
    """A 502 that relays the real upstream's own 5xx (distribution answers 500 to some odd
    but well-formed requests): the upstream failed, not the agent."""
    return status == 502 and b"answered 5" in body


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while len(out) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        return out


# ---- strategies -----------------------------------------------------------------------------

# Header values http.client accepts (no CR/LF); everything else is fair game.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t²٣é€"),
    max_size=300,
).map(lambda t: t.encode("utf-8").decode("latin-1"))
hexes = st.text("0123456789abcdef", min_size=0, max_size=130)
digests = st.one_of(
    hexes.map(lambda h: f"sha256:{h}"),
    hexes.map(lambda h: f"sha512:{h}"),
    st.text(max_size=80),
)
path_words = st.one_of(
    st.sampled_from(
        [
            "v2",
            "manifests",
            "blobs",
            "tags",
            "list",
            "library",
            "fuzz",
            "app",
            "127.0.0.1_1",
            "localhost",
            "docker.io",
            "..",
            ".",
            "_catalog",
            "uploads",
            "referrers",
        ]
    ),
    digests,
    st.text(max_size=40),
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["9" * 5000, "²", "٣", "1e3", "0x10", "", " 1", "-0"]),
    st.text(max_size=20),
)
ranges = st.one_of(
    st.tuples(numbers, numbers).map(lambda t: f"bytes={t[0]}-{t[1]}"),
    st.tuples(numbers, numbers).map(lambda t: f"bytes={t[0]}-{t[1]},0-1"),
    header_text,
)


@st.composite
def agent_requests(draw: st.DrawFn, image: Image) -> tuple[str, str, dict[str, str]]:
    known = [image.layers[0].digest, image.manifest_digest, image.config_digest]
    words = draw(st.lists(st.one_of(path_words, st.sampled_from(known)), max_size=8))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["manifests", "blobs", "tags"]))
        ref = draw(st.one_of(st.sampled_from([*known, "v1", "list"]), digests))
        words = [*words[:3], kind, ref] if words else [image.repo, kind, ref]
    path = "/v2/" + "/".join(quote(w, safe="") for w in words)
    if draw(st.booleans()):
        path = f"/v2/{image.repo}/" + path[4:]
    query = draw(
        st.dictionaries(st.sampled_from(["ns", "n", "last", "x", "digest"]), numbers, max_size=3)
    )
    if query:
        path += "?" + urlencode(query)
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Range"] = draw(ranges)
    if draw(st.booleans()):
        headers["Accept"] = draw(header_text)
    if draw(st.booleans()):
        headers["Authorization"] = draw(
            st.one_of(
                header_text,
                header_text.map(lambda t: "Basic " + t),
                header_text.map(lambda t: "Bearer " + t),
            )
        )
    method = draw(st.sampled_from(["GET", "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]))
    return method, path, headers


@pytest.fixture
def fuzz_image(registry: Registry, image_factory: ImageFactory) -> Image:
    return image_factory("fuzz/app", layers=(64 * 1024,))


def test_agent_registry_api(
    registry: Registry, fuzz_image: Image, agent_proc: AgentProcFactory
) -> None:
    agent = agent_proc(registry)
    assert agent.proc is not None
    pid = agent.proc.pid
    start = rss(pid)
    seen: list[tuple[int, str, str]] = []

    @BUDGET
    @given(agent_requests(fuzz_image))
    def one(req: tuple[str, str, dict[str, str]]) -> None:
        method, path, headers = req
        status, body = send(agent.port, method, path, headers)
        seen.append((status, method, path))
        if upstreams_own_failure(status, body):
            return
        assert status < 500, (status, body[:300], method, path, headers, agent.log()[-3000:])

    one()

    @BUDGET
    @given(st.binary(max_size=2000))
    def raw(data: bytes) -> None:
        answer = send_raw(agent.port, b"GET /v2/ HTTP/1.1\r\n" + data + b"\r\n\r\n")
        status_line = answer.split(b"\r\n", 1)[0]
        assert not status_line.startswith((b"HTTP/1.1 5", b"HTTP/1.0 5")), (data, answer[:300])

    raw()
    assert agent.proc.running, agent.log()
    assert rss(pid) - start < MAX_RSS_GROWTH
    # The pass reached real answers, not only refusals.
    assert any(s == 200 for s, _, _ in seen)


# ---- the tracker ---------------------------------------------------------------------------


@pytest.fixture
def tracker_proc(tmp_path: Path) -> Iterator[tuple[Proc, int, str]]:
    token = secrets.token_urlsafe(24)
    token_file = tmp_path / "fleet-token"
    token_file.write_text(token + "\n")
    port = free_port()
    proc = Proc(
        [
            sys.executable,
            "-m",
            "layerswarm",
            "tracker",
            "--listen",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token_file),
        ],
        tmp_path / "logs",
        name="tracker",
    )
    proc.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=30, proc=proc)
        yield proc, port, token
    finally:
        proc.stop()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=25,
)
FIELDS = [
    "digest",
    "state",
    "progress_bytes",
    "total_bytes",
    "total_size",
    "offset",
    "length",
    "info_hash",
    "torrent",
    "peer_id",
    "agent_id",
    "address",
    "peer_port",
    "zone",
    "region",
    "role",
    "counters",
    "items",
    "image",
    "images",
    "scope",
    "layers",
    "events",
]
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.sampled_from(["[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000]),
)


@st.composite
def tracker_requests(draw: st.DrawFn) -> tuple[str, str, bool, str]:
    agent_id = draw(st.one_of(st.sampled_from(["fuzz-agent", "other"]), st.text(max_size=20)))
    digest = draw(digests)
    template = draw(
        st.sampled_from(
            [
                "/v1/agents/{a}/heartbeat",
                "/v1/agents/{a}/announce",
                "/v1/agents/{a}/withdraw",
                "/v1/agents/{a}/lookup",
                "/v1/agents/{a}/bad-peer",
                "/v1/agents/{a}/tasks",
                "/v1/agents/{a}/preheat/{j}",
                "/v1/metainfo/{d}/{i}",
                "/v1/metainfo/{d}",
                "/preheat",
                "/preheat/{j}",
                "/webhooks/distribution",
                "/v1/fleet",
                "/",
                "/metrics",
                "/healthz",
            ]
        )
    )
    path = template.format(
        a=quote(agent_id, safe=""),
        d=quote(digest, safe=""),
        i=quote(draw(numbers), safe=""),
        j=quote(draw(st.text(max_size=20)), safe=""),
    )
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    return method, path, draw(st.booleans()), draw(bodies)


def test_tracker_api(tracker_proc: tuple[Proc, int, str]) -> None:
    proc, port, token = tracker_proc
    key = secrets.token_urlsafe(24)
    hello = json.dumps({"address": "127.0.0.1", "peer_port": 6881, "region": "r", "zone": "z"})
    auth = {"Authorization": f"Bearer {token}", "X-Layerswarm-Agent-Key": key}
    assert send(port, "POST", "/v1/agents/fuzz-agent/heartbeat", auth, hello.encode())[0] == 200
    start = rss(proc.pid)

    @BUDGET
    @given(tracker_requests())
    def one(req: tuple[str, str, bool, str]) -> None:
        method, path, authed, body = req
        headers = {"Content-Type": "application/json", "X-Layerswarm-Agent-Id": "fuzz-agent"}
        if authed:
            headers.update(auth)
        status, answer = send(port, method, path, headers, body.encode())
        assert status < 500, (status, answer[:300], method, path, body[:300], proc.log_tail(40))

    one()
    assert proc.running, proc.log_tail(60)
    assert rss(proc.pid) - start < MAX_RSS_GROWTH
