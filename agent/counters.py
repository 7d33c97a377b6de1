"""The byte counts an agent reports to the tracker, kept across restarts in its data dir.

Prometheus counters start again at zero when the process does (``rate()`` handles that), but
the tracker sums what every agent reports into fleet totals that must never go backwards: an
agent that restarted and reported 0 would take its earlier bytes out of them. So what was
reported last is saved in ``counters.json`` and added to the new process's counts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from core import durable
from core.wire import Counters

log = logging.getLogger(__name__)

FILE_NAME = "counters.json"


class LifetimeCounters:
    """``total(since_start)``: this data dir's counts so far; saved whenever they change."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / FILE_NAME
        self._base = self._load()
        self._saved = self._base

    def _load(self) -> Counters:
        try:
            raw = json.loads(self._path.read_text())
            return Counters.from_json(raw)
        except FileNotFoundError:
            return Counters()
        except (OSError, ValueError) as exc:
            # Losing the history is better than not starting; say so once.
            log.warning("ignoring %s, counting from zero: %s", self._path, exc)
            return Counters()

    def total(self, since_start: Counters) -> Counters:
        total = self._base + since_start
        if total != self._saved:
            self._save(total)
        return total

    def _save(self, counters: Counters) -> None:
        tmp = self._path.with_name(f"{FILE_NAME}.{os.getpid()}.tmp")
        try:
            # Flushed like every other state file: without it a power cut can leave an empty
            # counters.json, and the fleet totals would lose this agent's history.
            durable.write(self._path, json.dumps(counters.to_json()).encode(), tmp=tmp)
        except OSError as exc:
            log.warning("could not save %s: %s", self._path, exc.strerror)
            return
        self._saved = counters
