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

import duckdb
import sqlalchemy as sa

from analytics_shared.errors import TransientError
from analytics_shared.logging_config import get_logger
from etl_service.errors import RetryError, describe, is_connection_trouble

__all__ = ["RetryError", "RetryPolicy", "is_transient", "retry"]

T = TypeVar("T")
log = get_logger(__name__)


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
    """Connection-level trouble with the source, the state DB or the store.

    Our own errors say so by type (etl_service.errors); the rest are the
    third-party types that reach here unwrapped.
    """
    if isinstance(exc, TransientError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, sa.exc.DBAPIError):  # the state store, through SQLAlchemy
        return exc.connection_invalidated or isinstance(
            exc, sa.exc.OperationalError | sa.exc.InterfaceError
        )
    # Errors raised while DuckDB pulls the Arrow stream arrive as DuckDB
    # errors carrying the extractor's message.
    if isinstance(exc, duckdb.Error):
        return is_connection_trouble(str(exc))
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
                raise RetryError(f"{what}: {describe(exc)}", attempt) from exc
            delay = policy.delay(attempt)
            log.warning(
                "retrying",
                what=what,
                attempt=attempt,
                delay_s=round(delay, 3),
                error=describe(exc),
            )
            if on_retry is not None:
                on_retry(exc)
            sleep(delay)
