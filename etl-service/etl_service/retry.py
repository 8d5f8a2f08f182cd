"""Retrying transient failures: exponential backoff with full jitter.

One small helper instead of a dependency: the policy is a value object
(`RetryPolicy`), the classifier says which errors are worth another try, and
the caller learns how many attempts were made (the dead-letter queue records it).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from analytics_shared.logging_config import get_logger
from analytics_shared.object_store import StoreUnavailable
from etl_service.source import _TRANSIENT, SourceError

__all__ = ["RetryError", "RetryPolicy", "is_transient", "retry"]

T = TypeVar("T")
log = get_logger(__name__)


class RetryError(Exception):
    """The last attempt failed; `__cause__` is its error."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_seconds: float = 1.0
    max_seconds: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
        cap = min(self.max_seconds, self.base_seconds * (2 ** (attempt - 1)))
        return (rng or random).uniform(0, cap)


def is_transient(exc: BaseException) -> bool:
    """Connection-level trouble with the source, the state DB or the store."""
    if isinstance(exc, SourceError):
        return exc.transient
    if isinstance(exc, StoreUnavailable | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    # Errors raised while DuckDB pulls the Arrow stream arrive as DuckDB
    # errors carrying the driver's message.
    if type(exc).__module__.startswith(("duckdb", "_duckdb")):
        return bool(_TRANSIENT.search(str(exc)))
    return False


def retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[T, int]:
    """Call `fn` until it succeeds, a permanent error occurs or attempts run out.

    Returns (result, attempts). Raises RetryError (from the last error) with
    the number of attempts made.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(), attempt
        except Exception as exc:
            transient = is_transient(exc)
            if not transient or attempt >= policy.attempts or should_stop():
                raise RetryError(f"{what}: {type(exc).__name__}: {exc}", attempt) from exc
            delay = policy.delay(attempt)
            log.warning(
                "retrying",
                what=what,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=f"{type(exc).__name__}: {exc}",
            )
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
