"""A wall-clock jump for one test process: ``time.time`` moved by whole days on demand.

The machine's real clock is shared with everything else running on it and must not be set by
a test; moving ``time.time`` in this process is the fault a real node sees after an NTP step
or a bad RTC. Code that reads the monotonic clock (or an injected one) must not notice.
"""

from __future__ import annotations

import time

import pytest


class WallClockJump:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        self._real = time.time
        monkeypatch.setattr(time, "time", self._now)

    def _now(self) -> float:
        return self._real() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds
        # The fault must really be in effect for the code under test.
        assert abs(time.time() - self._real() - self.offset) < 5.0
