"""The S3 server stops during a publish: the ETL retries, then dead-letters; the
API keeps answering from the old version; when the server returns, the next
cycle publishes and the API swaps."""

from __future__ import annotations

import json

import httpx
import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from testsupport.api_server import ApiServer
from testsupport.snapshots import run_etl, wait_for


@pytest.fixture
def outage_env(platform_env) -> dict[str, str]:
    return {
        **platform_env,
        "LOG_LEVEL": "WARNING",
        "SYNC_SETTLE_SECONDS": "0",
        "RETRY_ATTEMPTS": "3",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "1",
        "RATE_LIMIT_REQUESTS": "100000",
    }


def quantity_of_row_1(client: httpx.Client) -> tuple[str, int]:
    r = client.get("/query", params={"q": "SELECT quantity FROM inventory WHERE id = 1"})
    assert r.status_code == 200, r.text
    return r.json()["data_version"], r.json()["data"][0]["quantity"]


@pytest.mark.slow
def test_store_outage_during_publish(outage_env, pg_url, seaweedfs, issuer, tmp_path):
    source = create_demo_source(pg_url)
    first = run_etl(["sync"], outage_env)
    assert first.returncode == 0, first.stderr[-3000:]
    v1 = json.loads(first.stdout.strip().splitlines()[-1])["version"]
    api = ApiServer(outage_env, workers=2, log_path=tmp_path / "api.log").start(ready_timeout=120)
    token = issuer.mint(sub="outage-user")
    client = httpx.Client(
        base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    try:
        before = quantity_of_row_1(client)
        assert before[0] == v1
        with source.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE inventory SET quantity = 4242, updated_at = now() AT TIME ZONE 'UTC'"
                    " WHERE id = 1"
                )
            )

        seaweedfs.stop()
        try:
            failed = run_etl(["sync"], outage_env)
            assert failed.returncode != 0, failed.stdout
            dlq = run_etl(["dlq", "list"], outage_env)
            assert dlq.returncode == 0, dlq.stderr[-3000:]
            entries = json.loads(dlq.stdout)
            assert entries, "the failed publish must be dead-lettered"

            # The API keeps answering from the version it has, and says the store is away.
            for _ in range(10):
                assert quantity_of_row_1(client) == before
            wait_for(
                lambda: client.get("/health").json()["last_refresh_failed"],
                timeout=30,
                what="a failed refresh on /health",
            )
            health = client.get("/health").json()
            assert health["status"] == "degraded" and health["data_version"] == v1
            assert health["data_age_seconds"] >= 0
        finally:
            seaweedfs.start()

        recovered = run_etl(["sync"], outage_env)
        assert recovered.returncode == 0, recovered.stderr[-3000:]
        v2 = json.loads(recovered.stdout.strip().splitlines()[-1])["version"]
        assert v2 and v2 != v1
        wait_for(
            lambda: all(quantity_of_row_1(client) == (v2, 4242) for _ in range(6)),
            timeout=60,
            what="the API on the new version",
        )
        wait_for(
            lambda: client.get("/health").json()["status"] == "ok",
            timeout=30,
            what="healthy again",
        )
    finally:
        client.close()
        api.stop()
        source.dispose()
        if seaweedfs.proc is None:  # never leave the session's server down
            seaweedfs.start()
