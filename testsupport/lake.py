"""Helpers for the lake-mode tests: the settings of a lake platform, the lake's
tables read back through the lake environment, comparisons with the source,
and an API host followed until it serves a version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import sqlalchemy as sa

from analytics_shared.lake import LakeConfig, run_lake
from analytics_shared.manifest import MANIFEST_KEY, Manifest
from etl_service.settings import EtlSettings
from testsupport.api_server import ApiServer
from testsupport.snapshots import store_from_env

__all__ = [
    "INVENTORY_SQL",
    "LAKE_TABLES",
    "answer",
    "assert_equal_to_source",
    "change_inventory",
    "lake_config",
    "lake_platform_env",
    "lake_snapshots",
    "lake_table",
    "published_manifest",
    "source_inventory",
    "wait_for_version",
    "working_db",
]

LAKE_TABLES = ("inventory", "orders")
INVENTORY_SQL = "SELECT id, product_id, warehouse, quantity FROM inventory ORDER BY id"


def lake_platform_env(platform_env: dict[str, str], pg_url: str) -> dict[str, str]:
    """Both services in lake mode, the catalog in the test's PostgreSQL database."""
    return {
        **platform_env,
        "PUBLISH_MODE": "lake",
        "DATABASE_URL": pg_url,
        "LAKE_CATALOG_URL": pg_url,
        "TABLES_TO_SYNC": ",".join(LAKE_TABLES),
        "SYNC_SETTLE_SECONDS": "0",
        "RECONCILE_INTERVAL_SECONDS": "0",  # deletes are seen every cycle
        "RETRY_ATTEMPTS": "3",
        "RETRY_BASE_SECONDS": "0.05",
        "RETRY_MAX_SECONDS": "0.2",
        "RATE_LIMIT_REQUESTS": "100000",
        "LOG_LEVEL": "WARNING",
    }


def published_manifest(env: dict[str, str]) -> Manifest:
    """The manifest the store publishes now."""
    return Manifest.from_json(store_from_env(env).get_bytes(MANIFEST_KEY)[0])


def lake_config(env: dict[str, str]) -> LakeConfig:
    settings = EtlSettings(**env)  # type: ignore[call-arg]
    return LakeConfig.from_settings(settings, env.get("LAKE_CATALOG_URL") or env["DATABASE_URL"])


def lake_snapshots(env: dict[str, str], rows: bool = False) -> dict[str, Any]:
    """{"current": id, "snapshots": [...]} as the lake's catalog says."""
    return run_lake(
        lake_config(env), "snapshots", {"tables": list(LAKE_TABLES), "rows": rows, "limit": 1000}
    )


def lake_table(config: LakeConfig, table: str, dest: Path) -> duckdb.DuckDBPyConnection:
    """The lake's current table, read by the lake environment, as a DuckDB table here."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{table}.parquet"
    run_lake(config, "export", {"table": table, "path": str(path)})
    con = duckdb.connect()
    con.execute(f"CREATE TABLE \"{table}\" AS FROM read_parquet('{path}')")
    return con


def working_db(env: dict[str, str]) -> duckdb.DuckDBPyConnection:
    """The ETL's working DuckDB (read-only; the ETL must not be running)."""
    return duckdb.connect(str(EtlSettings(**env).working_db_path), read_only=True)  # type: ignore[call-arg]


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> set[tuple[Any, ...]]:
    rows = con.execute(sql).fetchall()
    assert len(rows) == len(set(rows)), "duplicate rows"
    return set(rows)


def assert_equal_to_source(
    source: sa.Engine, con: duckdb.DuckDBPyConnection, table: str, what: str
) -> None:
    cols = [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]
    listed = ", ".join(f'"{c}"' for c in cols)
    with source.connect() as conn:
        expected = {tuple(r) for r in conn.execute(sa.text(f'SELECT {listed} FROM "{table}"'))}
    actual = _rows(con, f'SELECT {listed} FROM "{table}"')
    assert actual == expected, (
        f"{what} {table}: {len(actual)} rows vs {len(expected)} in the source;"
        f" missing {sorted(expected - actual)[:3]}, unexpected {sorted(actual - expected)[:3]}"
    )


def source_inventory(source: sa.Engine) -> list[dict[str, Any]]:
    with source.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(INVENTORY_SQL))]


def change_inventory(
    source: sa.Engine, delta: int, delete_id: int | None = None, rows: int = 5
) -> None:
    """Bump the quantities of ids 1..rows (and delete a row): a delta for the next
    cycle (more rows than the lake inlines in its catalog make data files)."""
    with source.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE inventory SET quantity = quantity + :d,"
                " updated_at = now() AT TIME ZONE 'UTC' WHERE id <= :rows"
            ),
            {"d": delta, "rows": rows},
        )
        if delete_id is not None:
            conn.execute(sa.text("DELETE FROM inventory WHERE id = :id"), {"id": delete_id})


def answer(api: ApiServer, token: str, sql: str = INVENTORY_SQL) -> dict[str, Any]:
    r = httpx.post(
        api.url + "/query",
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_for_version(api: ApiServer, version: str, timeout: float = 90) -> None:
    """Until every worker serves `version` (each polls on its own): ten /health
    answers in a row name it."""
    deadline, in_a_row = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and in_a_row < 10:
        health = httpx.get(api.url + "/health", timeout=5).json()
        in_a_row = in_a_row + 1 if health.get("data_version") == version else 0
        time.sleep(0.1 if in_a_row else 0.3)
    assert in_a_row >= 10, f"{api.url} did not serve {version} within {timeout} s"
