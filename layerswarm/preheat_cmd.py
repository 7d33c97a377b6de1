"""``layerswarm preheat IMAGE...``: pull images onto the fleet's seeds (or every agent) ahead
of a rollout, and watch each layer arrive.

One tracker job per image; with ``--wait`` (the default) the jobs' status is polled until
every job is done or failed, or ``--timeout`` passes. On a terminal the progress block is
redrawn in place; otherwise (a CI log, a pipe) one line is printed per change, so the output
stays readable and bounded.

Exit status: 0 all jobs done, 1 a job failed or the wait timed out (or the tracker could not
be reached), 2 a usage or configuration error (bad flags, missing token, token refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from core import settings
from core.settings import ConfigError, parse_duration
from layerswarm.trackerapi import TrackerAccess, TrackerAPI, TrackerAPIError, TrackerRefused

# no_agents: the tracker ended a job no live agent was in scope for (it says which scope).
TERMINAL = ("done", "failed", "no_agents")
BAR_WIDTH = 24


@dataclass(frozen=True)
class PreheatConfig(TrackerAccess):
    """Where the tracker is (flags, env, config file) and what this run asks for (flags only).

    The job's own options carry no ``setting``: ``LAYERSWARM_ZONE`` and ``LAYERSWARM_REGION``
    are the agent's, and a node's environment must not silently narrow an operator's job.
    """

    scope: str = "seeds"
    zone: str = ""
    region: str = ""
    wait: bool = True
    timeout: float = 1800.0
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope not in ("seeds", "all"):
            raise ConfigError(f"scope must be seeds or all, got {self.scope!r}")
        if self.timeout <= 0:
            raise ConfigError("timeout must be positive")
        if not 0.05 <= self.poll_interval <= 60:
            raise ConfigError("poll-interval must be between 50ms and 60s")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="registry/repo:tag or @digest")
    settings.add_arguments(parser, TrackerAccess)
    parser.add_argument(
        "--scope",
        choices=("seeds", "all"),
        default="seeds",
        help="seeds: regional cache nodes (every agent in scope when no seed is live); "
        "all: every agent (default: seeds)",
    )
    parser.add_argument("--zone", default="", help="only agents in this zone")
    parser.add_argument("--region", default="", help="only agents in this region")
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the jobs and show their progress (default: wait)",
    )
    parser.add_argument(
        "--timeout",
        default="30m",
        metavar="DURATION",
        help="give up waiting after this long; the jobs keep running (default: 30m)",
    )
    parser.add_argument(
        "--poll-interval",
        default="1s",
        metavar="DURATION",
        help="how often the job status is read while waiting (default: 1s)",
    )


def load_config(args: argparse.Namespace) -> PreheatConfig:
    access = settings.load(TrackerAccess, args)
    return PreheatConfig(
        **{f.name: getattr(access, f.name) for f in dataclasses.fields(TrackerAccess)},
        scope=args.scope,
        zone=args.zone,
        region=args.region,
        wait=args.wait,
        timeout=parse_duration(args.timeout),
        poll_interval=parse_duration(args.poll_interval),
    )


# -- rendering (pure functions of the tracker's job status) ------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def short_digest(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}"


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def agent_counts(status: dict[str, Any]) -> dict[str, int]:
    counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    for agent in status.get("agents", []):
        state = str(agent.get("state", "pending"))
        counts[state if state in counts else "running"] += 1
    return counts


def blobs(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The config blob first, then the layers in manifest order."""
    config = status.get("config")
    return ([config] if isinstance(config, dict) else []) + list(status.get("layers", []))


def layer_lines(status: dict[str, Any]) -> list[str]:
    """One progress line per blob: bytes over all target agents, and agents finished."""
    targets = max(len(status.get("agents", [])), 1)
    lines = []
    for layer in blobs(status):
        size = int(layer.get("size", 0))
        done = int(layer.get("done_bytes", 0))
        want = size * targets
        fraction = done / want if want else (1.0 if layer.get("agents_done") else 0.0)
        lines.append(
            f"  {short_digest(str(layer.get('digest', '?')))} {bar(fraction)} "
            f"{100 * min(fraction, 1.0):3.0f}% {human_bytes(min(done, want) / targets)}"
            f"/{human_bytes(size)} {layer.get('agents_done', 0)}/{targets} agents"
            + (" (config)" if layer.get("kind") == "config" else "")
        )
    return lines


def job_header(status: dict[str, Any]) -> str:
    c = agent_counts(status)
    reason = status.get("reason")
    return (
        f"{status.get('image', '?')} job {status.get('id', '?')}: {status.get('state', '?')} "
        f"(agents: {c['done']} done, {c['running']} running, {c['pending']} pending, "
        f"{c['failed']} failed)" + (f": {reason}" if reason else "")
    )


def job_block(status: dict[str, Any]) -> list[str]:
    lines = [job_header(status), *layer_lines(status)]
    for agent in status.get("agents", []):
        if agent.get("state") == "failed":
            lines.append(f"  agent {agent.get('agent_id')} failed: {agent.get('error') or '?'}")
    return lines


def _sources(layer: dict[str, Any]) -> str:
    got = layer.get("sources") or {}
    return ", ".join(f"{n} from {s}" for s, n in sorted(got.items()))


def summary(status: dict[str, Any], seconds: float) -> list[str]:
    c = agent_counts(status)
    layers = status.get("layers", [])
    every = blobs(status)
    total = sum(int(x.get("size", 0)) for x in every)
    config = " + config" if status.get("config") else ""
    lines = [
        f"{status.get('image', '?')}: {status.get('state', '?')} in {seconds:.1f}s: "
        f"{len(layers)} layers{config}, {human_bytes(total)}; agents {c['done']} done, "
        f"{c['failed']} failed, {c['running'] + c['pending']} unfinished"
    ]
    for x in every:
        kind = " (config)" if x.get("kind") == "config" else ""
        where = _sources(x)
        lines.append(
            f"  {x.get('digest')} {human_bytes(int(x.get('size', 0)))}{kind}"
            + (f": {where}" if where else "")
        )
    by_source = status.get("bytes_by_source") or {}
    if by_source:
        lines.append(
            "  bytes: "
            + ", ".join(
                f"{human_bytes(int(by_source.get(s, 0)))} from {s}"
                for s in ("peer", "upstream", "cache")
                if s in by_source
            )
        )
    done_on = status.get("agents_done") or []
    if done_on:
        lines.append(f"  done on: {', '.join(str(a) for a in done_on)}")
    if status.get("reason") and status.get("state") != "done":
        lines.append(f"  {status['reason']}")
    if not status.get("agents"):
        lines.append(
            "  no live agent is in this job's scope: check `layerswarm status` and --zone/--region"
        )
    return lines


# -- display -------------------------------------------------------------------------------


class Display:
    """Redraws a block of lines on a terminal; elsewhere prints each changed line once."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._drawn = 0
        self._last: list[str] = []

    def show(self, lines: list[str]) -> None:
        if self.tty:
            if self._drawn:
                # Cursor up to the block's first line, then clear to the end of the screen.
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            seen = set(self._last)
            for line in lines:
                if line not in seen:
                    self.out.write(line + "\n")
            self._last = lines
        self.out.flush()

    def finish(self) -> None:
        self._drawn = 0


# -- the command -----------------------------------------------------------------------------


@dataclass
class Outcome:
    statuses: dict[str, dict[str, Any]]
    timed_out: bool
    seconds: float


def wait_for_jobs(
    api: TrackerAPI,
    jobs: dict[str, str],
    config: PreheatConfig,
    display: Display,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Poll each job until all are terminal or the timeout passes; bounded in time and count."""
    started = clock()
    deadline = started + config.timeout
    statuses: dict[str, dict[str, Any]] = {
        job_id: {"id": job_id, "image": image, "state": "pending", "agents": [], "layers": []}
        for job_id, image in jobs.items()
    }
    unreachable_since: float | None = None
    while True:
        for job_id, status in list(statuses.items()):
            if status.get("state") in TERMINAL:
                continue
            try:
                statuses[job_id] = api.preheat_status(job_id)
                unreachable_since = None
            except TrackerRefused:
                raise
            except TrackerAPIError as exc:
                # A tracker restart is not a failed preheat: keep polling until the deadline.
                if unreachable_since is None:
                    unreachable_since = clock()
                    print(f"warning: {exc}; still trying", file=sys.stderr)
        display.show([line for s in statuses.values() for line in job_block(s)])
        if all(s.get("state") in TERMINAL for s in statuses.values()):
            return Outcome(statuses, False, clock() - started)
        now = clock()
        if now >= deadline:
            return Outcome(statuses, True, now - started)
        sleep(min(config.poll_interval, deadline - now))


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    api = config.client()
    out = sys.stdout
    jobs: dict[str, str] = {}
    try:
        for image in dict.fromkeys(args.images):
            job_id = api.create_preheat(image, config.scope, config.zone, config.region)
            jobs[job_id] = image
            print(f"{image}: preheat job {job_id} created (scope {config.scope})", file=out)
        if not config.wait:
            return 0
        display = Display(out, out.isatty())
        outcome = wait_for_jobs(api, jobs, config, display)
    except TrackerRefused as exc:
        print(f"layerswarm preheat: {_explain(exc, config)}", file=sys.stderr)
        return 2 if exc.status in (400, 401) else 1
    except TrackerAPIError as exc:
        print(f"layerswarm preheat: {exc}", file=sys.stderr)
        return 1
    display.finish()
    print("", file=out)
    for status in outcome.statuses.values():
        for line in summary(status, outcome.seconds):
            print(line, file=out)
    if outcome.timed_out:
        unfinished = [s["image"] for s in outcome.statuses.values() if s["state"] not in TERMINAL]
        print(
            f"layerswarm preheat: timed out after {config.timeout:.0f}s waiting for "
            f"{', '.join(unfinished)} (the jobs keep running; check again with "
            "`layerswarm status`)",
            file=sys.stderr,
        )
        return 1
    failed = [s for s in outcome.statuses.values() if s.get("state") != "done"]
    return 1 if failed else 0


def _explain(exc: TrackerRefused, config: PreheatConfig) -> str:
    if exc.status == 401:
        return (
            f"the tracker at {exc.url} refused the token in {config.tracker_token_file}: "
            "use the file the tracker's --token-file names"
        )
    return str(exc)
