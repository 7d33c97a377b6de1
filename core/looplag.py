"""Noticing a blocked event loop, and saying what blocked it.

Every request of a daemon shares one event loop: a callback that runs long (a flush behind
heavy writeback, a big hash on the loop) or a process starved of CPU holds all of them, and
nothing else in the logs shows it. ``watch`` asks to wake every ``interval`` seconds and
logs a WARNING when it woke ``threshold`` seconds or more late, with where the loop's thread
spent that time (Linux's per-thread scheduler statistics): on a CPU (a callback computing),
waiting for one (the machine is overloaded), or neither (blocked in a system call: a disk
flush, a write held back by dirty-page throttling).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def thread_sched() -> tuple[float, float]:
    """Seconds this thread has run on a CPU and waited for one (zeros where not Linux)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            ran, waited, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


async def watch(
    *,
    threshold: float = 1.0,
    interval: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sched: Callable[[], tuple[float, float]] = thread_sched,
) -> None:
    """Run until cancelled; see the module's docstring."""
    while True:
        started, (ran, waited) = clock(), sched()
        await asyncio.sleep(interval)
        late = clock() - started - interval
        if late >= threshold:
            ran_after, waited_after = sched()
            log.warning(
                "event loop blocked seconds=%.2f on_cpu=%.2f waiting_for_cpu=%.2f (the rest: "
                "blocked in a system call)",
                late,
                ran_after - ran,
                waited_after - waited,
            )
