"""Lake mode end to end: a busy source, the ETL committing to a DuckLake
(PostgreSQL catalog, SeaweedFS as S3), and an API host's replicator advancing
its local replica by the change; every copy must equal the source row for row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from api_service.data.lake_replica import LakeReplicator
from etl_service.demo_source import create_demo_source
from testsupport.api_server import ApiServer
from testsupport.lake import (
    INVENTORY_SQL,
    LAKE_TABLES,
    answer,
    assert_equal_to_source,
    lake_table,
    wait_for_version,
)
from testsupport.proxy import TcpProxy
from testsupport.snapshots import run_etl, store_from_env
from testsupport.source_writers import writers_running

TABLES = LAKE_TABLES


@pytest.fixture
def replicator(make_replicator: Callable[[str], LakeReplicator]) -> LakeReplicator:
    return make_replicator("api")


@pytest.mark.parametrize("seed", [11, 44])
def test_lake_and_replica_equal_source_after_concurrent_changes(
    seed: int, pg_url: str, lake_etl, replicator: LakeReplicator, tmp_path: Path
) -> None:
    source = create_demo_source(pg_url, seed=seed)
    etl = lake_etl(
        SYNC_SETTLE_SECONDS="1", SYNC_LOOKBACK_SECONDS="10", RECONCILE_INTERVAL_SECONDS="2"
    )
    first = etl.run_cycle()
    assert first.status == "success", first.error
    assert first.version is not None and first.version.startswith("lake-")
    assert replicator.run_once() == first.version  # bootstrap

    cycles = 0
    with writers_running(source, seed) as stats:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline or cycles < 3:
            result = etl.run_cycle()
            assert result.status == "success", result.error
            cycles += 1
            if cycles % 2:  # the replica sometimes advances over several snapshots
                replicator.run_once()
    assert cycles >= 3 and stats["late"] >= 2 and stats["deletes"] >= 3, (cycles, stats)

    final = etl.run_cycle(reconcile=True)
    assert final.status == "success", final.error
    manifest = etl.publisher.current()
    assert manifest is not None and manifest.lake is not None
    replicator.run_once()
    assert replicator.status["version"] == manifest.version
    assert replicator.status["bootstraps_total"] == 1, "the replica advanced by the change"

    served = replicator.cache.directory / f"{manifest.version}.db"
    replica = duckdb.connect(str(served), read_only=True)
    try:
        for table in TABLES:
            assert_equal_to_source(source, etl.warehouse.con, table, "working DuckDB")
            assert_equal_to_source(source, replica, table, "replica")
            lake = lake_table(replicator.config, table, tmp_path)
            try:
                assert_equal_to_source(source, lake, table, "lake")
            finally:
                lake.close()
    finally:
        replica.close()
        source.dispose()


@pytest.mark.slow
def test_two_api_hosts_serve_the_same_snapshot_and_ride_out_a_catalog_outage(
    platform_env: dict[str, str], pg_url: str, issuer, tmp_path: Path
) -> None:
    source = create_demo_source(pg_url)
    env = {
        **platform_env,
        "PUBLISH_MODE": "lake",
        "DATABASE_URL": pg_url,
        "TABLES_TO_SYNC": ",".join(TABLES),
        "SYNC_SETTLE_SECONDS": "0",
        "RECONCILE_INTERVAL_SECONDS": "0",  # deletes are seen every cycle
    }
    first = run_etl(["sync"], env)
    assert first.returncode == 0, first.stderr + first.stdout
    url = sa.make_url(pg_url)
    proxy = TcpProxy(url.port or 5432, url.host or "127.0.0.1")
    proxied = url.set(port=proxy.port).render_as_string(hide_password=False)
    hosts = [
        ApiServer(
            {**env, "DATA_DIR": str(tmp_path / name), "LAKE_CATALOG_URL": proxied},
            workers=2,
            log_path=tmp_path / f"{name}.log",
        )
        for name in ("host-a", "host-b")
    ]
    token = issuer.mint(sub="lake-user")
    try:
        for api in hosts:
            api.start(ready_timeout=120)
        with source.connect() as conn:
            expected = [dict(r._mapping) for r in conn.execute(sa.text(INVENTORY_SQL))]
        answers = [answer(api, token, INVENTORY_SQL) for api in hosts]
        assert answers[0]["data_version"] == answers[1]["data_version"]
        assert answers[0]["data_version"].startswith("lake-")
        assert answers[0]["data"] == answers[1]["data"] == expected

        # A cycle while the catalog is unreachable for the API hosts: they keep
        # serving their replica (healthy, the old version) ...
        proxy.drop()
        with source.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE inventory SET quantity = quantity + 1,"
                    " updated_at = now() AT TIME ZONE 'UTC' WHERE id <= 5"
                )
            )
            conn.execute(sa.text("DELETE FROM inventory WHERE id = 7"))
        second = run_etl(["sync"], env)
        assert second.returncode == 0, second.stderr + second.stdout
        time.sleep(3)
        details = {"Authorization": f"Bearer {issuer.mint(scopes='read:status')}"}
        for api in hosts:
            health = httpx.get(api.url + "/health", headers=details, timeout=5)
            assert health.status_code == 200
            assert health.json()["data_version"] == answers[0]["data_version"]
            # The replica's lag behind the version published meanwhile shows.
            lag = health.json()["lake_replica"]
            assert lag["lag_snapshots"] >= 1 and lag["lag_seconds"] > 0, lag
            assert lag["last_error"], lag
            assert answer(api, token, INVENTORY_SQL)["data"] == expected
        # ... and catch up, by the change, once it is back.
        proxy.restore()
        manifest_version = json.loads(store_from_env(env).get_bytes("current/manifest.json")[0])[
            "version"
        ]
        assert manifest_version != answers[0]["data_version"]
        for api in hosts:
            wait_for_version(api, manifest_version)
        with source.connect() as conn:
            expected = [dict(r._mapping) for r in conn.execute(sa.text(INVENTORY_SQL))]
        for api in hosts:
            after = answer(api, token, INVENTORY_SQL)
            assert after["data_version"] == manifest_version
            assert after["data"] == expected
            health = httpx.get(api.url + "/health", headers=details, timeout=5).json()
            lake = health["lake_replica"]
            assert lake["bootstraps_total"] == 1
            assert lake["lag_snapshots"] == 0 and lake["lag_seconds"] == 0
        # The replicator logs as the workers do: JSON lines of the api-service.
        lines = (tmp_path / "host-a.log").read_text().splitlines()
        replicator = [line for line in lines if "replica_advanced" in line]
        assert replicator and all(
            json.loads(line)["service"] == "api-service" for line in replicator
        ), replicator[:2]
    finally:
        for api in hosts:
            api.stop()
        proxy.close()
        source.dispose()
