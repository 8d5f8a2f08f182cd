"""The Redis sliding window across windows: hits older than the window stop
counting (they are pruned), hits inside it still count. Deterministic: the
older hits are written into the user's sorted set at Redis' own clock minus
an offset, as an earlier window would have left them."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import threading
import time
import uuid

import redis

from api_service import redis_outage
from api_service.auth import rate_limit
from api_service.auth.rate_limit import (
    LocalRateLimiter,
    RateDecision,
    RedisRateLimiter,
    build_rate_limiter,
)
from api_service.redis_outage import RedisOutage
from api_service.settings import ApiSettings
from testsupport.ports import free_port

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


def _hits(limiter: RedisRateLimiter, user: str, n: int, limit: int = 3) -> list[RateDecision]:
    """`n` requests of `user` one after the other; the limiter is closed afterwards."""

    async def go() -> list[RateDecision]:
        try:
            return [await limiter.hit(user, limit, WINDOW) for _ in range(n)]
        finally:
            await limiter.aclose()

    return asyncio.run(go())


def _run(limiter: RedisRateLimiter, user: str, n: int) -> list[bool]:
    return [d.allowed for d in _hits(limiter, user, n)]


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


# -- what a client sees: the decision's numbers and headers ---------------------------


def test_a_decision_becomes_the_documented_headers():
    allowed = RateDecision(True, 5, 4, 0.2).headers()
    # A reset under one second still says 1 (never 0: "retry now" would be wrong).
    assert allowed == {
        "X-RateLimit-Limit": "5",
        "X-RateLimit-Remaining": "4",
        "X-RateLimit-Reset": "1",
    }
    refused = RateDecision(False, 5, 0, 2.1).headers()
    assert refused["X-RateLimit-Reset"] == "3" and refused["Retry-After"] == "3"


def test_the_local_window_is_half_open_and_its_numbers_are_exact():
    limiter = LocalRateLimiter()
    first = limiter.hit_now("u", 2, 10, now=100.0)
    assert (first.allowed, first.remaining, first.reset_seconds) == (True, 1, 10.0)
    second = limiter.hit_now("u", 2, 10, now=104.0)
    assert (second.allowed, second.remaining, second.reset_seconds) == (True, 0, 6.0)
    refused = limiter.hit_now("u", 2, 10, now=109.5)
    assert (refused.allowed, refused.remaining, refused.reset_seconds) == (False, 0, 0.5)
    # Exactly `window` seconds later the first hit no longer counts.
    again = limiter.hit_now("u", 2, 10, now=110.0)
    assert (again.allowed, again.remaining, again.reset_seconds) == (True, 0, 4.0)
    # A limit of zero refuses everything and resets after a whole window.
    none = limiter.hit_now("z", 0, 10, now=0.0)
    assert (none.allowed, none.remaining, none.reset_seconds) == (False, 0, 10.0)


def test_a_lowered_limit_refuses_at_once_in_the_local_limiter_too():
    """The operator lowered the limit (3 to 2) after three hits: the fourth is refused."""
    limiter = LocalRateLimiter()
    assert all(limiter.hit_now("gus", 3, 60, now=t).allowed for t in (1.0, 2.0, 3.0))
    lowered = limiter.hit_now("gus", 2, 60, now=4.0)
    assert (lowered.allowed, lowered.remaining) == (False, 0)


def test_windows_count_apart_and_a_busy_user_is_not_forgotten_first():
    limiter = LocalRateLimiter(max_users=2)
    assert limiter.hit_now("a", 1, 60, now=1.0).allowed
    assert limiter.hit_now("a", 1, 3600, now=1.0).allowed  # another policy's window
    assert not limiter.hit_now("a", 1, 60, now=2.0).allowed  # "a" is used again: most recent
    assert limiter.hit_now("b", 1, 60, now=2.0).allowed  # evicts the least recent: (a, 3600)
    assert not limiter.hit_now("a", 1, 60, now=3.0).allowed  # still remembered
    assert not limiter.hit_now("b", 1, 60, now=3.0).allowed  # and so is the newest
    assert limiter.hit_now("a", 1, 3600, now=3.0).allowed  # the evicted one starts afresh
    assert len(limiter._hits) == 2


# -- Redis: the numbers, the key, and the fallback's timing ------------------------------


def test_redis_decisions_carry_the_remaining_count_and_the_reset(redis_url):
    prefix = f"test-rl-{uuid.uuid4().hex}"
    decisions = _hits(RedisRateLimiter(redis_url, prefix=prefix, timeout=5.0), "erin", 3, limit=2)
    assert [(d.allowed, d.limit, d.remaining) for d in decisions] == [
        (True, 2, 1),
        (True, 2, 0),
        (False, 2, 0),
    ]
    # Seconds until the oldest hit leaves the 60-second window (not micro- or milliseconds).
    assert all(WINDOW - 5 < d.reset_seconds <= WINDOW for d in decisions)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in client.scan_iter(f"{prefix}:*")]
        digest = hashlib.sha256(b"erin").hexdigest()[:32]
        assert keys == [f"{prefix}:{digest}:{WINDOW}s"]  # hashed user id, window in the key
        client.delete(*keys)
    finally:
        client.close()


def test_a_redis_reset_is_a_whole_window_for_a_first_hit_then_counts_down(redis_url):
    prefix = f"test-rl-{uuid.uuid4().hex}"
    limiter = RedisRateLimiter(redis_url, prefix=prefix, timeout=5.0)
    key = limiter._key("hal", WINDOW)
    first, second = _hits(limiter, "hal", 2, limit=5)
    # The only hit is the oldest: it leaves the window a whole window later.
    assert first.reset_seconds == WINDOW
    # Redis' clock has microseconds: a later hit sees a fraction of a second less
    # (its X-RateLimit-Reset rounds that up, not down).
    assert WINDOW - 5 < second.reset_seconds < WINDOW and second.reset_seconds % 1 != 0
    assert second.headers()["X-RateLimit-Reset"] == str(WINDOW)
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(key)
    finally:
        client.close()


def test_a_lowered_limit_reports_zero_remaining_not_a_negative_count(redis_url):
    prefix = f"test-rl-{uuid.uuid4().hex}"
    limiter = RedisRateLimiter(redis_url, prefix=prefix, timeout=5.0)
    # Five hits counted under the old limit (5); the operator lowered it to 3.
    _plant_hits(redis_url, limiter._key("fay", WINDOW), [5, 4, 3, 2, 1])
    (decision,) = _hits(limiter, "fay", 1)
    assert (decision.allowed, decision.remaining) == (False, 0)
    assert decision.headers()["X-RateLimit-Remaining"] == "0"
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(limiter._key("fay", WINDOW))
    finally:
        client.close()


def test_the_default_key_prefix_and_the_configured_one(redis_url, auth_env):
    assert RedisRateLimiter(redis_url)._key("x", 60).startswith("analytics-api:ratelimit:")
    settings = ApiSettings(**auth_env, REDIS_URL=redis_url, RATE_LIMIT_KEY_PREFIX="tenant-a:rl")
    limiter = build_rate_limiter(settings)
    assert isinstance(limiter, RedisRateLimiter) and limiter.prefix == "tenant-a:rl"
    assert isinstance(build_rate_limiter(ApiSettings(**auth_env)), LocalRateLimiter)
    asyncio.run(limiter.aclose())


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


class _Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.warnings.append((event, fields))


def _down_limiter(monkeypatch, start: float) -> tuple[RedisRateLimiter, _Clock, _Log, list[int]]:
    """A limiter whose Redis refuses connections, on a clock the test sets."""
    clock, log = _Clock(), _Log()
    clock.now = start
    monkeypatch.setattr(rate_limit, "time", clock)  # the local fallback's window
    monkeypatch.setattr(redis_outage, "time", clock)
    monkeypatch.setattr(redis_outage, "log", log)
    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    attempts = [0]
    script = limiter._script

    async def counted(**kwargs: object) -> object:
        attempts[0] += 1
        return await script(**kwargs)

    limiter._script = counted  # type: ignore[assignment]
    return limiter, clock, log, attempts


def test_while_redis_is_down_it_is_retried_every_five_seconds_and_logged_once_a_minute(
    monkeypatch,
):
    limiter, clock, log, attempts = _down_limiter(monkeypatch, 1_000.0)

    async def at(*times: float) -> list[tuple[int, int]]:
        seen = []
        for t in times:
            clock.now = 1_000.0 + t
            await limiter.hit("dan", 100, 60)
            seen.append((attempts[0], len(log.warnings)))
        return seen

    async def run() -> list[tuple[int, int]]:
        try:
            return await at(0, 1, 4.9, 5.0, 9.9, 10.0, 60.0, 65.0)
        finally:
            await limiter.aclose()

    # Tried at 0, then once per 5 s (not per request); counted locally meanwhile.
    # Warned at the first failure, then not again until more than 60 s later.
    tried_and_warned = [(1, 1), (1, 1), (1, 1), (2, 1), (2, 1), (3, 1), (4, 1), (5, 2)]
    assert asyncio.run(run()) == tried_and_warned
    assert [event for event, _ in log.warnings] == ["rate_limit_redis_unavailable"] * 2
    assert log.warnings[0][1] == {"error": "ConnectionError", "fallback": "per-process limiter"}
    # Every request was counted locally: at 65 s the 4 made at 5 s or before have
    # left the window; 4 later ones and this one remain.
    assert limiter.fallback.hit_now("dan", 100, 60).remaining == 100 - 5


def test_redis_down_right_after_boot_is_tried_at_once_and_warned_about(monkeypatch):
    """The monotonic clock starts near 0 when the machine boots: an API started
    then still tries Redis on its first request and warns of the first failure."""
    limiter, _, log, attempts = _down_limiter(monkeypatch, 0.5)

    async def run() -> None:
        try:
            await limiter.hit("eve", 100, 60)
        finally:
            await limiter.aclose()

    asyncio.run(run())
    assert attempts[0] == 1
    assert [event for event, _ in log.warnings] == ["rate_limit_redis_unavailable"]


def test_an_outage_is_warned_about_at_most_once_a_minute(monkeypatch):
    clock, log = _Clock(), _Log()
    monkeypatch.setattr(redis_outage, "time", clock)
    monkeypatch.setattr(redis_outage, "log", log)
    outage = RedisOutage("slots_down", "local caps", retry_after=5.0)
    warned = []
    for t in (0.0, 59.5, 60.0, 60.5, 120.0, 120.6):
        clock.now = t
        outage.failed(OSError())
        warned.append(len(log.warnings))
    assert warned == [1, 1, 1, 2, 2, 3]  # only more than 60 s after the last warning
    assert log.warnings[0] == ("slots_down", {"error": "OSError", "fallback": "local caps"})


def test_a_per_process_limiter_under_several_workers_is_warned_about(monkeypatch):
    log = _Log()
    monkeypatch.setattr(rate_limit, "log", log)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    rate_limit.warn_if_per_process(LocalRateLimiter())
    assert [(e, f["workers"]) for e, f in log.warnings] == [("rate_limit_per_process", 3)]
    rate_limit.warn_if_per_process(RedisRateLimiter("redis://127.0.0.1:1/0"))  # shared: fine
    for one_or_none in ("1", "0"):
        monkeypatch.setenv("WEB_CONCURRENCY", one_or_none)
        rate_limit.warn_if_per_process(LocalRateLimiter())
    assert len(log.warnings) == 1
    # Without WEB_CONCURRENCY: one process, or Gunicorn's default of two workers.
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    assert rate_limit._worker_count() == 1
    monkeypatch.setitem(sys.modules, "gunicorn.arbiter", sys)
    assert rate_limit._worker_count() == 2
    rate_limit.warn_if_per_process(LocalRateLimiter())
    assert [f["workers"] for _, f in log.warnings] == [3, 2]


def test_a_hung_redis_delays_a_request_by_half_a_second_at_most():
    """A Redis that accepts connections but never answers (overloaded, half-dead):
    the request is served by the local fallback after the 0.5 s socket timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()

    async def run() -> tuple[RateDecision, float]:
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        started = time.monotonic()
        try:
            return await limiter.hit("gil", 3, WINDOW), time.monotonic() - started
        finally:
            await limiter.aclose()

    try:
        decision, elapsed = asyncio.run(run())
    finally:
        for conn in (*held, server):
            conn.close()
    assert decision.allowed and decision.remaining == 2  # counted locally
    assert 0.45 < elapsed < 1.4  # the default timeout; a 1.5 s one would fail here
