"""Per-user query caps hold across Gunicorn workers (issue 12, review 4).

The per-user cap used to be counted in each worker, so with two workers a
user ran twice MAX_CONCURRENT_QUERIES_PER_USER slow queries at once. With
REDIS_URL the slots are leases in Redis. Real Gunicorn with 2 workers, real
Redis, real tokens: one user's burst of slow queries runs at most the cap
however the kernel spreads it over the workers, the rest are refused at once
with Retry-After, another user is answered quickly meanwhile, and the leases
of a worker killed mid-query come back after QUERY_SLOT_LEASE_SECONDS.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from testsupport.api_server import ApiServer, request_records
from testsupport.serving import p95_of_simple_queries, published_inventory_env

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TIMEOUT = 4
LEASE = 3
# ~2.7e10 row combinations: runs until the deadline interrupts it.
SLOW = (
    "SELECT count(*) FROM inventory a, inventory b, inventory c"
    " WHERE hash(a.id::BIGINT + b.id * 3001 + c.id::BIGINT * 9000001) = 0"
)


class Served:
    def __init__(self, api: ApiServer, log: Path, prefix: str) -> None:
        self.api, self.log, self.prefix = api, log, prefix


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, issuer) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("shared-slots")
    env = published_inventory_env(
        root,
        issuer,
        REDIS_URL=REDIS_URL,
        QUERY_TIMEOUT_SECONDS=str(TIMEOUT),
        QUERY_WORKERS="4",
        DUCKDB_THREADS="1",
        DUCKDB_MEMORY_LIMIT="256MB",
        MAX_CONCURRENT_QUERIES_PER_USER="2",
        MAX_QUEUED_QUERIES_PER_USER="0",
        QUERY_SLOT_LEASE_SECONDS=str(LEASE),
    )
    prefix = env["RATE_LIMIT_KEY_PREFIX"]
    log = root / "api.log"
    api = ApiServer(env, workers=2, log_path=log).start(ready_timeout=90)
    try:
        yield Served(api, log, prefix)
    finally:
        api.stop()


def _auth(issuer, sub: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(sub=sub)}"}


def _post(served: Served, headers: dict[str, str], sql: str) -> httpx.Response:
    # A new connection per request: the kernel picks the worker each time.
    return httpx.post(served.api.url + "/query", json={"sql": sql}, headers=headers, timeout=60)


def _burst(served: Served, headers: dict[str, str], n: int) -> list[httpx.Response]:
    answers: list[httpx.Response] = []

    def run() -> None:
        answers.append(_post(served, headers, SLOW))

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(timeout=60)
    return answers


def _pids(served: Served, answers: list[httpx.Response]) -> set[int]:
    ids = {r.headers["X-Request-ID"] for r in answers}
    return {rec["pid"] for rec in request_records(served.log) if rec.get("request_id") in ids}


def test_a_users_cap_holds_across_workers_and_others_stay_fast(served, issuer):
    hog = _auth(issuer, f"hog-{uuid.uuid4().hex[:6]}")
    other = _auth(issuer, "patient")
    for _ in range(4):  # warm both workers for this user (first-call costs are not fairness)
        assert _post(served, other, "SELECT 1 AS x").status_code == 200
    answers: list[httpx.Response] = []
    burst = threading.Thread(target=lambda: answers.extend(_burst(served, hog, 8)))
    burst.start()
    time.sleep(0.5)
    p95 = p95_of_simple_queries(served.api.url, other)
    burst.join(timeout=60)
    assert len(answers) == 8
    assert len(_pids(served, answers)) == 2, "the burst reached one worker only"
    ran = [r for r in answers if r.status_code == 400]
    refused = [r for r in answers if r.status_code != 400]
    assert all(r.json()["error"]["code"] == "query_timeout" for r in ran)
    assert len(ran) <= 2, [r.json()["error"]["code"] for r in answers]
    for r in refused:
        assert r.status_code in (429, 503), r.text
        assert r.json()["error"]["code"] in ("too_many_concurrent_queries", "queue_timeout")
        assert int(r.headers["Retry-After"]) >= 1
    assert p95 < 1.0, p95


def _leases(served: Served, sub: str) -> list[str]:
    """The user's leases in Redis ("<worker pid>:<id>")."""
    key = f"{served.prefix}:slots:user:{hashlib.sha256(sub.encode()).hexdigest()[:32]}"
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return list(client.zrange(key, 0, -1))
    finally:
        client.close()


def test_a_killed_workers_slots_come_back_after_the_lease(served, issuer):
    sub = f"killed-{uuid.uuid4().hex[:6]}"
    hog = _auth(issuer, sub)
    threads = [
        threading.Thread(target=lambda: _swallow(lambda: _post(served, hog, SLOW)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    members: list[str] = []
    while time.monotonic() < deadline and len(members) < 2:
        members = _leases(served, sub)
        time.sleep(0.05)
    assert len(members) == 2, members  # both slow queries hold a lease
    for pid in {int(m.split(":")[0]) for m in members}:  # workers of our own server
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    for t in threads:
        t.join(timeout=30)
    # The dead workers' leases still count (Gunicorn starts new workers) ...
    r = _post(served, hog, "SELECT 1 AS x")
    if time.monotonic() - killed < LEASE - 0.5:
        assert r.status_code == 429, r.text
    # ... until the lease time passes without a renewal.
    time.sleep(max(0.0, killed + LEASE + 0.5 - time.monotonic()))
    deadline = time.monotonic() + 30
    while (r := _post(served, hog, "SELECT 1 AS x")).status_code != 200:
        assert time.monotonic() < deadline, r.text  # (a new worker may still be starting)
        time.sleep(0.2)
    assert _leases(served, sub) == []


def _swallow(fn) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the worker was killed under the request
        fn()
