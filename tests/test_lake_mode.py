"""Lake mode end to end: a busy source, the ETL committing to a DuckLake
(PostgreSQL catalog, SeaweedFS as S3), and an API host's replicator advancing
its local replica by the change; every copy must equal the source row for row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from analytics_shared.lake import LakeConfig, run_lake
from api_service.data.cache import SnapshotCache
from api_service.data.lake_replica import LakeReplicator
from api_service.settings import ApiSettings
from etl_service.demo_source import create_demo_source
from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.api_server import ApiServer
from testsupport.proxy import TcpProxy
from testsupport.snapshots import run_etl, store_from_env
from testsupport.source_writers import writers_running

TABLES = ("inventory", "orders")


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> set[tuple[Any, ...]]:
    rows = con.execute(sql).fetchall()
    assert len(rows) == len(set(rows)), "duplicate rows"
    return set(rows)


@pytest.fixture
def lake_env(pg_url: str, s3_env: dict[str, str], data_dir: Path) -> dict[str, str]:
    return {
        **s3_env,
        "SOURCE_URL": pg_url,
        "DATABASE_URL": pg_url,  # the state database is the lake's catalog too
        "DATA_DIR": str(data_dir),
        "PUBLISH_MODE": "lake",
        "TABLES_TO_SYNC": ",".join(TABLES),
        "RETRY_ATTEMPTS": "3",
        "RETRY_BASE_SECONDS": "0.01",
        "RETRY_MAX_SECONDS": "0.05",
    }


@pytest.fixture
def lake_etl(lake_env: dict[str, str]) -> Iterator[Callable[..., SyncEngine]]:
    engines: list[SyncEngine] = []

    def build(**overrides: str) -> SyncEngine:
        engine = SyncEngine.from_settings(EtlSettings(**{**lake_env, **overrides}), progress=False)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def replicator(
    lake_env: dict[str, str], auth_env: dict[str, str], pg_url: str, tmp_path: Path
) -> LakeReplicator:
    """An API host's replicator (its own cache directory)."""
    settings = ApiSettings(
        **{**lake_env, **auth_env, "DATA_DIR": str(tmp_path / "api"), "LAKE_CATALOG_URL": pg_url}
    )
    store = settings.open_store()
    config = LakeConfig.from_settings(settings, pg_url)
    return LakeReplicator(store, config, SnapshotCache(store, settings.cache_dir))


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]


def _assert_equal_to_source(
    source: sa.Engine, con: duckdb.DuckDBPyConnection, table: str, what: str
) -> None:
    cols = _columns(con, table)
    listed = ", ".join(f'"{c}"' for c in cols)
    with source.connect() as conn:
        expected = {tuple(r) for r in conn.execute(sa.text(f'SELECT {listed} FROM "{table}"'))}
    actual = _rows(con, f'SELECT {listed} FROM "{table}"')
    assert actual == expected, (
        f"{what} {table}: {len(actual)} rows vs {len(expected)} in the source;"
        f" missing {sorted(expected - actual)[:3]}, unexpected {sorted(actual - expected)[:3]}"
    )


def _lake_table(config: LakeConfig, table: str, dest: Path) -> duckdb.DuckDBPyConnection:
    """The lake's current table, read by the lake environment, as a DuckDB table here."""
    path = dest / f"{table}.parquet"
    run_lake(config, "export", {"table": table, "path": str(path)})
    con = duckdb.connect()
    con.execute(f"CREATE TABLE \"{table}\" AS FROM read_parquet('{path}')")
    return con


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
            _assert_equal_to_source(source, etl.warehouse.con, table, "working DuckDB")
            _assert_equal_to_source(source, replica, table, "replica")
            lake = _lake_table(replicator.config, table, tmp_path)
            try:
                _assert_equal_to_source(source, lake, table, "lake")
            finally:
                lake.close()
    finally:
        replica.close()
        source.dispose()


def _answer(api: ApiServer, token: str, sql: str) -> dict[str, Any]:
    r = httpx.post(
        api.url + "/query",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _wait_for_version(api: ApiServer, version: str, timeout: float = 90) -> None:
    """Until every worker serves `version` (each polls on its own): ten /health
    answers in a row name it."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and in_a_row < 10:
        health = httpx.get(api.url + "/health", timeout=5).json()
        in_a_row = in_a_row + 1 if health.get("data_version") == version else 0
        time.sleep(0.1 if in_a_row else 0.3)
    assert in_a_row >= 10, f"{api.url} did not serve {version} within {timeout} s"


INVENTORY_SQL = "SELECT id, product_id, warehouse, quantity FROM inventory ORDER BY id"


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
        answers = [_answer(api, token, INVENTORY_SQL) for api in hosts]
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
        for api in hosts:
            health = httpx.get(api.url + "/health", timeout=5)
            assert health.status_code == 200
            assert health.json()["data_version"] == answers[0]["data_version"]
            assert _answer(api, token, INVENTORY_SQL)["data"] == expected
        # ... and catch up, by the change, once it is back.
        proxy.restore()
        manifest_version = json.loads(store_from_env(env).get_bytes("current/manifest.json")[0])[
            "version"
        ]
        assert manifest_version != answers[0]["data_version"]
        for api in hosts:
            _wait_for_version(api, manifest_version)
        with source.connect() as conn:
            expected = [dict(r._mapping) for r in conn.execute(sa.text(INVENTORY_SQL))]
        for api in hosts:
            after = _answer(api, token, INVENTORY_SQL)
            assert after["data_version"] == manifest_version
            assert after["data"] == expected
            details = {"Authorization": f"Bearer {issuer.mint(scopes='read:status')}"}
            health = httpx.get(api.url + "/health", headers=details, timeout=5).json()
            lake = health["lake_replica"]
            assert lake["bootstraps_total"] == 1
    finally:
        for api in hosts:
            api.stop()
        proxy.close()
        source.dispose()
