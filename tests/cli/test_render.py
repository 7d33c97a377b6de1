"""Pure parts of the ops commands: progress rendering, TTY redraw, mirror matching."""

from __future__ import annotations

import io
from typing import Any

from layerswarm.doctor import mirrors_from_info, same_endpoint
from layerswarm.preheat_cmd import Display, bar, layer_lines, summary
from layerswarm.status_cmd import table

D1 = "sha256:" + "a" * 64


def status(done: int, agents: int = 2) -> dict[str, Any]:
    return {
        "id": "j1",
        "image": "r/x:1",
        "state": "running",
        "agents": [{"agent_id": f"a{i}", "state": "running"} for i in range(agents)],
        "layers": [{"digest": D1, "size": 1000, "done_bytes": done, "agents_done": 0}],
    }


def test_layer_progress_counts_every_target_agent() -> None:
    # 1000 bytes done of a 1000-byte layer wanted on two agents: half way.
    (text,) = layer_lines(status(1000))
    assert text.split()[0] == "sha256:aaaaaaaaaaaa"
    assert bar(0.5) in text and " 50% " in text and "0/2 agents" in text


def test_bar_is_clamped() -> None:
    assert bar(2.0, 4) == "[####]" and bar(-1, 4) == "[....]"


def test_tty_redraws_in_place_and_a_pipe_prints_only_changes() -> None:
    tty = io.StringIO()
    d = Display(tty, tty=True)
    d.show(["a", "b"])
    d.show(["a", "c"])
    assert tty.getvalue() == "a\nb\n\x1b[2F\x1b[Ja\nc\n"

    pipe = io.StringIO()
    d = Display(pipe, tty=False)
    d.show(["a", "b"])
    d.show(["a", "b"])
    d.show(["a", "c"])
    assert pipe.getvalue() == "a\nb\nc\n"


def test_summary_names_layers_and_unfinished_agents() -> None:
    lines = summary(status(500), 2.5)
    assert lines[0].startswith("r/x:1: running in 2.5s: 1 layers, 1000 B; agents 0 done, 0 failed")
    assert "2 unfinished" in lines[0]
    assert lines[1].split() == [D1, "1000", "B"]


def test_same_endpoint_forms() -> None:
    agent = "http://127.0.0.1:5050"
    assert same_endpoint("http://127.0.0.1:5050/", agent)
    assert same_endpoint("localhost:5050/ghcr.io", agent)
    assert same_endpoint("127.0.0.1:5050", agent)
    assert not same_endpoint("127.0.0.1:5051", agent)
    assert not same_endpoint("http://10.0.0.1:5050", agent)
    assert not same_endpoint("https://mirror.example.internal", agent)


def test_mirrors_from_docker_and_podman_info() -> None:
    docker_info = {"RegistryConfig": {"Mirrors": ["http://127.0.0.1:5050/"], "IndexConfigs": {}}}
    assert mirrors_from_info(docker_info) == {"docker.io": ["http://127.0.0.1:5050/"]}
    podman_info = {
        "RegistryConfig": {
            "Mirrors": [],
            "IndexConfigs": {"ghcr.io": {"Mirrors": ["127.0.0.1:5050/ghcr.io"]}},
        }
    }
    assert mirrors_from_info(podman_info) == {"ghcr.io": ["127.0.0.1:5050/ghcr.io"]}
    assert mirrors_from_info({}) == {}


def test_table_aligns_columns() -> None:
    assert table(["A", "BB"], [["xyz", 1]]) == ["A    BB", "---  --", "xyz  1"]
