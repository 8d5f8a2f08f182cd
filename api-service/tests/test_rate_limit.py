"""Per-user rate limits: exact under concurrency, shared through Redis across
Gunicorn workers, per-policy overrides, never counting health/metrics/preflight,
and still serving (locally limited) when Redis is down."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from api_service.auth.rate_limit import LocalRateLimiter, RedisRateLimiter
from testsupport.api_app import make_app_client, write_whitelist
from testsupport.api_server import ApiServer, request_records
from testsupport.ports import free_port


def test_local_limiter_is_a_sliding_window():
    limiter = LocalRateLimiter()
    decisions = [limiter.hit_now("u", 3, 10, now=100.0 + i) for i in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[2].remaining == 0 and decisions[3].headers()["Retry-After"] == "7"
    # Refused requests are not counted: once the first hit leaves the window, one more fits.
    assert limiter.hit_now("u", 3, 10, now=110.5).allowed
    assert not limiter.hit_now("u", 3, 10, now=110.6).allowed
    assert limiter.hit_now("other", 3, 10, now=110.6).allowed


def test_local_limiter_bounds_the_users_it_remembers():
    limiter = LocalRateLimiter(max_users=100)
    for i in range(1000):
        limiter.hit_now(f"user-{i}", 1, 60, now=1.0)
    assert len(limiter._hits) == 100


def test_redis_limiter_is_exact_under_concurrency(redis_url):
    prefix = f"test-rl-{uuid.uuid4().hex}"

    async def run() -> list[bool]:
        # A generous socket timeout: this pins Redis's exactness, not the local
        # fallback a slow Redis call (past the default 0.5 s) degrades to.
        limiter = RedisRateLimiter(redis_url, prefix=prefix, timeout=5.0)
        try:
            decisions = await asyncio.gather(*(limiter.hit("alice", 50, 60) for _ in range(60)))
            other = await limiter.hit("bob", 50, 60)
            assert other.allowed and other.remaining == 49
            return [d.allowed for d in decisions]
        finally:
            await limiter.aclose()

    allowed = asyncio.run(run())
    assert allowed.count(True) == 50
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        assert len(keys) == 2 and all(0 < client.pttl(k) <= 60_000 for k in keys)
        client.delete(*keys)
    finally:
        client.close()


def test_redis_down_falls_back_to_a_local_limiter(caplog, capsys):
    async def run() -> list[bool]:
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
        try:
            return [(await limiter.hit("carol", 3, 60)).allowed for _ in range(5)]
        finally:
            await limiter.aclose()

    assert asyncio.run(run()) == [True, True, True, False, False]
    # Through stdlib logging once configure_logging() ran in this process (an
    # earlier test), to stdout with structlog's defaults, or stderr once configured.
    captured = capsys.readouterr()
    assert "rate_limit_redis_unavailable" in caplog.text + captured.out + captured.err


@pytest.fixture
def limited_env(tmp_path, auth_env) -> dict[str, str]:
    whitelist = write_whitelist(
        tmp_path / "whitelist.json",
        {
            "policies": {
                "default": {"tables": ["inventory"]},
                "tight": {
                    "tables": ["inventory"],
                    "rate_limit": {"requests": 3, "window_seconds": 60},
                },
            },
            "apps": {"tight-app": "tight"},
        },
    )
    return {
        **auth_env,
        "DATA_DIR": str(tmp_path / "var"),
        "QUERY_WHITELIST_PATH": str(whitelist),
        "RATE_LIMIT_REQUESTS": "5",
        "CORS_ORIGINS": "https://app.example.com",
    }


def test_limits_per_user_per_policy_and_uncounted_paths(limited_env, issuer):
    with make_app_client(limited_env, wait_for_data=False) as client:
        alice = {"Authorization": f"Bearer {issuer.mint(sub='rl-alice')}"}
        tight = {"Authorization": f"Bearer {issuer.mint(sub='rl-tina', azp='tight-app')}"}
        for _ in range(10):  # none of these count
            client.get("/health")
            client.get("/metrics")
            client.options(
                "/queries",
                headers={
                    "Origin": "https://app.example.com",
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
        statuses = [client.get("/queries", headers=alice).status_code for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        statuses = [client.get("/queries", headers=tight).status_code for _ in range(4)]
        assert statuses == [200] * 3 + [429]

        ok = client.get(
            "/queries", headers={"Authorization": f"Bearer {issuer.mint(sub='rl-bob')}"}
        )
        assert ok.headers["X-RateLimit-Limit"] == "5"
        assert ok.headers["X-RateLimit-Remaining"] == "4"
        assert int(ok.headers["X-RateLimit-Reset"]) >= 1
        refused = client.get("/queries", headers={**alice, "Origin": "https://app.example.com"})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.json()["error"]["code"] == "rate_limited"
        # Browsers may read the limit headers: CORS exposes them.
        exposed = refused.headers["Access-Control-Expose-Headers"].lower()
        assert "retry-after" in exposed and "x-ratelimit-remaining" in exposed


def test_forged_identity_headers_do_not_change_the_bucket(limited_env, issuer):
    with make_app_client(limited_env, wait_for_data=False) as client:
        token = {"Authorization": f"Bearer {issuer.mint(sub='rl-dave')}"}
        statuses = [
            client.get(
                "/queries",
                headers={**token, "X-Forwarded-For": f"10.0.0.{i}", "X-User-Id": f"u{i}"},
            ).status_code
            for i in range(6)
        ]
        assert statuses == [200] * 5 + [429]


def test_sixty_requests_across_two_gunicorn_workers_let_exactly_fifty_through(
    tmp_path, auth_env, redis_url, issuer
):
    prefix = f"test-rl-{uuid.uuid4().hex}"
    env = {
        **auth_env,
        "DATA_DIR": str(tmp_path / "var"),
        "REDIS_URL": redis_url,
        "RATE_LIMIT_KEY_PREFIX": prefix,
        "RATE_LIMIT_REQUESTS": "50",
        "RATE_LIMIT_WINDOW": "60",
        "LOG_JSON": "true",
    }
    api = ApiServer(env, workers=2, log_path=tmp_path / "api.log").start(require_data=False)
    try:
        first = {"Authorization": f"Bearer {issuer.mint(sub=f'{prefix}-first')}"}
        second = {"Authorization": f"Bearer {issuer.mint(sub=f'{prefix}-second')}"}

        def call(headers: dict[str, str]) -> int:
            # A fresh connection per request, so both workers take their share.
            return httpx.get(api.url + "/queries", headers=headers, timeout=30).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(call, [first] * 60))
        assert statuses.count(200) == 50, statuses
        assert statuses.count(429) == 10
        assert [call(second) for _ in range(5)] == [200] * 5
    finally:
        api.stop()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(f"{prefix}:*"))
        assert sorted(client.zcard(k) for k in keys) == [5, 50]
        client.delete(*keys)
    finally:
        client.close()
    # both workers answered: 50 in all is one limit shared through Redis, not one per worker
    records = request_records(tmp_path / "api.log")
    assert len({r["pid"] for r in records if r["path"] == "/queries"}) == 2
