"""Per-user rate limits: a sliding window counted in Redis across all workers.

Each user (the token's `sub`, or `apikey:<id>`) may make `limit` requests in
any `window` seconds. With `REDIS_URL` the count lives in Redis (one sorted
set per user, updated by one atomic Lua script using Redis' clock), so the
limit holds across Gunicorn workers and replicas. Without Redis, or while
Redis is unreachable, each process counts for itself (and says so in the log).
The key is never taken from a request header a client could forge, and it
includes the window: policies with different windows count apart, so a hit
under a 1-second policy never trims the log of a 3,600-second one.

A sliding log rather than a fixed window: 60 rapid requests let exactly 50
through whatever the clock says, and a refused request is not counted, so a
client that backs off recovers after the window.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from analytics_shared.logging_config import get_logger
from api_service.redis_outage import RedisOutage
from api_service.settings import ApiSettings

__all__ = [
    "LocalRateLimiter",
    "RateDecision",
    "RateLimiter",
    "RedisRateLimiter",
    "build_rate_limiter",
    "warn_if_per_process",
]

log = get_logger(__name__)

_SLIDING_WINDOW = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil(window / 1000))
  count = count + 1
  allowed = 1
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local reset = window
if oldest[2] then reset = tonumber(oldest[2]) + window - now end
return {allowed, count, reset}
"""


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float  # until the oldest counted request leaves the window

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(max(1, math.ceil(self.reset_seconds))),
        }
        if not self.allowed:
            headers["Retry-After"] = headers["X-RateLimit-Reset"]
        return headers


class RateLimiter:
    backend = "none"

    async def hit(self, user: str, limit: int, window: int) -> RateDecision:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class LocalRateLimiter(RateLimiter):
    """In-process sliding log; the number of users tracked is bounded (LRU)."""

    backend = "memory"

    def __init__(self, max_users: int = 100_000) -> None:
        self.max_users = max_users
        self._hits: OrderedDict[tuple[str, int], deque[float]] = OrderedDict()

    def hit_now(self, user: str, limit: int, window: int, now: float | None = None) -> RateDecision:
        now = time.monotonic() if now is None else now
        key = (user, window)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
            while len(self._hits) > self.max_users:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while hits and hits[0] <= now - window:
            hits.popleft()
        allowed = len(hits) < limit
        if allowed:
            hits.append(now)
        reset = hits[0] + window - now if hits else float(window)
        return RateDecision(allowed, limit, max(0, limit - len(hits)), reset)

    async def hit(self, user: str, limit: int, window: int) -> RateDecision:
        return self.hit_now(user, limit, window)


class RedisRateLimiter(RateLimiter):
    """Redis sliding log; falls back to a local limiter while Redis is down."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "analytics-api:ratelimit",
        timeout: float = 0.5,
        retry_after: float = 5.0,
    ) -> None:
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._redis.register_script(_SLIDING_WINDOW)
        self.fallback = LocalRateLimiter()
        self.outage = RedisOutage(
            "rate_limit_redis_unavailable", "per-process limiter", retry_after
        )

    def _key(self, user: str, window: int) -> str:
        # Hashed: bounded key length, and no user id in Redis' keyspace.
        return f"{self.prefix}:{hashlib.sha256(user.encode()).hexdigest()[:32]}:{window}s"

    async def hit(self, user: str, limit: int, window: int) -> RateDecision:
        if not self.outage.skip():
            try:
                allowed, count, reset_us = await self._script(
                    keys=[self._key(user, window)],
                    args=[limit, window * 1_000_000, uuid.uuid4().hex],
                )
                return RateDecision(
                    bool(allowed), limit, max(0, limit - int(count)), int(reset_us) / 1e6
                )
            except (TimeoutError, RedisError, OSError) as exc:
                # Keep serving: count locally and try Redis again in a few seconds.
                self.outage.failed(exc)
        return self.fallback.hit_now(user, limit, window)

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_rate_limiter(settings: ApiSettings) -> RateLimiter:
    if settings.redis_url:
        return RedisRateLimiter(settings.redis_url, prefix=settings.rate_limit_key_prefix)
    return LocalRateLimiter()


def _worker_count() -> int:
    configured = os.environ.get("WEB_CONCURRENCY", "")
    if configured.isdigit():
        return int(configured)
    # Under Gunicorn without WEB_CONCURRENCY our config starts at least two workers.
    return 2 if "gunicorn.arbiter" in sys.modules else 1


def warn_if_per_process(limiter: RateLimiter) -> None:
    workers = _worker_count()
    if isinstance(limiter, LocalRateLimiter) and workers > 1:
        log.warning(
            "rate_limit_per_process",
            workers=workers,
            detail="REDIS_URL is not set: each worker counts on its own, so a user may make"
            " up to workers x RATE_LIMIT_REQUESTS requests per window",
        )
