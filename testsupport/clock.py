"""A controllable clock for time-dependent tests: no test sleeps on a short TTL.

`FakeClock()` is a callable returning seconds, like `time.monotonic`; the
test moves it with `advance(seconds)`. `wall` is the matching wall clock (it
starts at the real time, so tokens minted now are valid on it).
"""

from __future__ import annotations

import time

__all__ = ["FakeClock"]


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self._wall_offset = time.time() - start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds
