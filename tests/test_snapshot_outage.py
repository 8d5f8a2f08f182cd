"""The S3 server stops during a publish: the ETL retries, then dead-letters; the
API keeps answering from the old version; when the server returns, the next
cycle publishes and the API swaps. An API started while the store cannot be
reached serves the copy its host verified before."""

from __future__ import annotations

import json

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from analytics_shared.object_store import open_store
from etl_service.demo_source import create_demo_source
from testsupport.api_server import ApiServer
from testsupport.proxy import TcpProxy
from testsupport.publishing import publish_database
from testsupport.serving import build_database
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


def test_an_api_started_during_a_real_store_outage_serves_the_hosts_cached_copy(
    s3_env, auth_env, seaweedfs, issuer, tmp_path
):
    """docs/architecture.md: a worker that starts while the store is unreachable
    serves the newest version verified on the host before (`serving_cached`)."""
    proxy = TcpProxy(seaweedfs.s3_port)  # the API reaches SeaweedFS only through it
    env = {
        **s3_env,
        **auth_env,
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
        "DATA_DIR": str(tmp_path / "var"),  # the host's cache, kept across restarts
        "SNAPSHOT_POLL_SECONDS": "0.5",
        "RATE_LIMIT_REQUESTS": "100000",
        "LOG_LEVEL": "WARNING",
    }
    store = open_store(
        s3_env["STORAGE_URL"],
        endpoint_url=seaweedfs.endpoint_url,  # the publisher's own way in stays up
        region=s3_env["S3_REGION"],
        access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )

    def publish(marker: int) -> str:
        db = build_database(tmp_path / f"v{marker}.db", inventory_rows=100, marker=marker)
        con = duckdb.connect(str(db))
        try:
            return publish_database(con, store, tmp_path / "work").version
        finally:
            con.close()

    headers = {"Authorization": f"Bearer {issuer.mint(sub='outage-start')}"}

    def answer(api: ApiServer) -> tuple[str, int]:
        r = httpx.get(  # a new connection each time: any worker may answer
            api.url + "/query", params={"q": "SELECT sum(quantity) AS s FROM inventory"},
            headers=headers, timeout=30,
        )  # fmt: skip
        assert r.status_code == 200, r.text
        return r.json()["data_version"], r.json()["data"][0]["s"]

    v1 = publish(1)
    api = ApiServer(env, workers=2, log_path=tmp_path / "api-1.log").start(ready_timeout=120)
    try:
        wait_for(lambda: answer(api)[0] == v1, timeout=30, what="the first API on v1")
        expected = answer(api)
    finally:
        api.stop()

    proxy.drop()  # the store is unreachable: connections refused
    api = ApiServer(env, workers=2, log_path=tmp_path / "api-2.log")
    try:
        api.start(ready_timeout=120)  # ready (200) without the store
        v2 = publish(2)  # published meanwhile; these workers cannot see it yet
        for _ in range(10):
            assert answer(api) == expected
        health = httpx.get(api.url + "/health", timeout=10).json()
        assert health["status"] == "degraded" and health["data_version"] == v1
        assert health["serving_cached"] is True and health["last_refresh_failed"] is True

        proxy.restore()
        wait_for(
            lambda: all(answer(api)[0] == v2 for _ in range(6)),
            timeout=60,
            what="the API on the version published during the outage",
        )
        wait_for(
            lambda: httpx.get(api.url + "/health", timeout=10).json()["status"] == "ok",
            timeout=30,
            what="healthy again",
        )
    finally:
        api.stop()
        proxy.close()
