"""While Redis is unreachable: skip it for a few seconds, warn once a minute.

The rate limiter and the shared query slots keep serving on per-process counts
when Redis fails; this is the state both keep, so a dead Redis costs one
socket timeout per `retry_after` seconds (not one per request) and the log
gets one warning a minute (not one per request).
"""

from __future__ import annotations

import time

from analytics_shared.logging_config import get_logger

__all__ = ["RedisOutage"]

log = get_logger(__name__)

WARN_EVERY_SECONDS = 60


class RedisOutage:
    def __init__(self, event: str, fallback: str, retry_after: float) -> None:
        self.event = event  # the warning's log event
        self.fallback = fallback  # what serves meanwhile, as the warning says
        self.retry_after = retry_after
        # None until the first failure: the monotonic clock starts near 0 at boot,
        # so no number is safely "long ago".
        self._down_until: float | None = None
        self._warned_at: float | None = None

    def skip(self) -> bool:
        """Redis failed less than `retry_after` seconds ago: do not wait on it yet."""
        return self._down_until is not None and time.monotonic() < self._down_until

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._down_until = now + self.retry_after
        if self._warned_at is None or now - self._warned_at > WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning(self.event, error=type(exc).__name__, fallback=self.fallback)
