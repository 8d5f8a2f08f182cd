"""When and how long to wait before trying again (429 and 503).

`Retry-After` (seconds or an HTTP date) is honoured: never retry sooner than
asked, and give up at once when the API asks for more than `max_delay`.
Without it the wait grows exponentially, with jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "parse_retry_after"]


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait, or None when absent or unreadable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 20.0
    retry_on: frozenset[int] = frozenset({429, 503})

    @classmethod
    def disabled(cls) -> RetryPolicy:
        return cls(max_attempts=1)

    def delay(self, attempt: int, status: int, retry_after: float | None) -> float | None:
        """The wait before the next attempt, or None to give up."""
        if attempt >= self.max_attempts or status not in self.retry_on:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_delay else None
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2
