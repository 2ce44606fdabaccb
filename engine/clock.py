"""Time as the engine sees it: wall-clock seconds, replaceable by a `FakeClock` in tests."""

from __future__ import annotations

import time


class Clock:
    """Wall-clock seconds since the epoch."""

    def now(self) -> float:
        return time.time()


class FakeClock(Clock):
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.current = start

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds
