"""The background tasks of one daemon, owned by its composition root.

Downloads, heartbeats, announces and preheat jobs outlive the request or call that started
them, so they cannot live in an ``async with asyncio.TaskGroup()`` of their caller; and one
failed download must not cancel the others, as a TaskGroup would. A ``Supervisor`` keeps
them instead: it holds each task until it ends, logs a crash once with its traceback, and on
``close`` cancels what still runs and waits for all of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class SupervisorClosed(RuntimeError):
    """A task was started after ``Supervisor.close`` returned."""


class Supervisor:
    """Tasks started with ``spawn`` run until they end or ``close`` cancels them.

    Contract: a task that raises (anything but cancellation) is logged at ERROR with its
    traceback and forgotten; the others go on. ``close`` cancels every running task, also
    those spawned while it waits (they are cancelled at once), and returns when all have
    ended; ``spawn`` after that raises SupervisorClosed.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        if self._closed:
            coro.close()
            raise SupervisorClosed(f"{self.name}: cannot start {name}, already closed")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        if self._closing:
            task.cancel()
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s: task %s crashed", self.name, task.get_name(), exc_info=exc)

    async def close(self, within: float = 10.0) -> None:
        """Cancel every task and wait for them, at most ``within`` seconds in all: a task
        that will not end is named in the log, and left behind rather than hang a shutdown."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        # A task may start another while it unwinds (an announce from a download's cleanup):
        # those are cancelled as they are spawned, and waited for in the next round.
        while self._tasks:
            running = list(self._tasks)
            for task in running:
                task.cancel()
            _, pending = await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()))
            if pending:
                log.warning(
                    "%s: %d tasks did not end within %.0fs of being cancelled: %s",
                    self.name,
                    len(pending),
                    within,
                    ", ".join(sorted(t.get_name() for t in pending)),
                )
                break
        self._closed = True
