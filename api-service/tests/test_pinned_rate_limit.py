"""The Redis sliding window across windows: hits older than the window stop
counting (they are pruned), hits inside it still count. Deterministic: the
older hits are written into the user's sorted set at Redis' own clock minus
an offset, as an earlier window would have left them."""

from __future__ import annotations

import asyncio
import uuid

import redis

from api_service.auth.rate_limit import RedisRateLimiter

WINDOW = 60  # seconds; the policy window the limiter keys its Redis set by


def _plant_hits(url: str, key: str, ages_seconds: list[float]) -> None:
    client = redis.Redis.from_url(url)
    try:
        seconds, micros = client.time()
        now_us = seconds * 1_000_000 + micros
        client.zadd(
            key, {f"old-{i}": now_us - int(age * 1e6) for i, age in enumerate(ages_seconds)}
        )
    finally:
        client.close()


def _run(limiter: RedisRateLimiter, user: str, n: int) -> list[bool]:
    async def go() -> list[bool]:
        try:
            return [(await limiter.hit(user, 3, WINDOW)).allowed for _ in range(n)]
        finally:
            await limiter.aclose()

    return asyncio.run(go())


def test_hits_from_the_previous_window_no_longer_count(redis_url):
    prefix = f"test-rl-{uuid.uuid4().hex}"
    limiter = RedisRateLimiter(redis_url, prefix=prefix)
    # The limit (3) was used up 61-90 s ago: a new window has begun.
    _plant_hits(redis_url, limiter._key("alice", WINDOW), [90, 75, 61])
    assert _run(limiter, "alice", 4) == [True, True, True, False]


def test_hits_inside_the_window_still_count(redis_url):
    prefix = f"test-rl-{uuid.uuid4().hex}"
    limiter = RedisRateLimiter(redis_url, prefix=prefix)
    # Two old hits (pruned), two within the last 60 s (counted): one more fits.
    _plant_hits(redis_url, limiter._key("bob", WINDOW), [120, 70, 59, 1])
    assert _run(limiter, "bob", 2) == [True, False]
    client = redis.Redis.from_url(redis_url)
    try:
        key = limiter._key("bob", WINDOW)
        assert client.zcard(key) == 3  # the two old hits are gone, the refusal not counted
        client.delete(key)
    finally:
        client.close()
