"""Fixtures for the sync-engine tests: settings builders, row comparison, a TCP proxy."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.proxy import TcpProxy
from testsupport.webhook import Receiver

FAST_RETRIES = {"RETRY_ATTEMPTS": "3", "RETRY_BASE_SECONDS": "0.01", "RETRY_MAX_SECONDS": "0.05"}


@pytest.fixture
def etl_settings(pg_url: str, data_dir: Path) -> Callable[..., EtlSettings]:
    """Settings for a PostgreSQL source and a PostgreSQL state store (same test DB)."""

    def build(**overrides: str) -> EtlSettings:
        values: dict[str, Any] = {
            "SOURCE_URL": pg_url,
            "DATABASE_URL": pg_url,
            "STORAGE_URL": (data_dir / "store").resolve().as_uri(),
            "DATA_DIR": str(data_dir),
            "TABLES_TO_SYNC": "inventory,products,orders,transactions,customers",
            "SYNC_SETTLE_SECONDS": "0",
            "SYNC_LOOKBACK_SECONDS": "5",
            **FAST_RETRIES,
            **overrides,
        }
        return EtlSettings(**values)

    return build


@pytest.fixture
def make_engine(etl_settings: Callable[..., EtlSettings]) -> Iterator[Callable[..., SyncEngine]]:
    engines: list[SyncEngine] = []

    def build(**overrides: str) -> SyncEngine:
        engine = SyncEngine.from_settings(etl_settings(**overrides), progress=False)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        with contextlib.suppress(Exception):
            engine.close()


def row_hash(rows: list[tuple[Any, ...]]) -> int:
    """Order-independent hash of a multiset of rows (sum of per-row sha256)."""
    total = 0
    for row in rows:
        total += int.from_bytes(hashlib.sha256(repr(row).encode()).digest(), "big")
    return total % (1 << 256)


def source_rows(engine: sa.Engine, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    cols = ", ".join(f'"{c}"' for c in columns)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f'SELECT {cols} FROM "{table}"'))]


def duck_rows(
    con: duckdb.DuckDBPyConnection, table: str, columns: list[str]
) -> list[tuple[Any, ...]]:
    cols = ", ".join(f'"{c}"' for c in columns)
    return [tuple(r) for r in con.execute(f'SELECT {cols} FROM "{table}"').fetchall()]


def assert_same_rows(
    expected: list[tuple[Any, ...]], actual: list[tuple[Any, ...]], table: str
) -> None:
    if row_hash(expected) != row_hash(actual):
        missing = sorted(set(expected) - set(actual))[:5]
        extra = sorted(set(actual) - set(expected))[:5]
        raise AssertionError(
            f"{table}: {len(expected)} source rows vs {len(actual)} in DuckDB;"
            f" missing {missing}; unexpected {extra}"
        )


@pytest.fixture
def same_rows() -> Callable[[sa.Engine, duckdb.DuckDBPyConnection, str], None]:
    """assert(source engine, DuckDB connection, table): equal row for row, all columns."""

    def check(source: sa.Engine, con: duckdb.DuckDBPyConnection, table: str) -> None:
        columns = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
        ]
        assert columns, f"{table} is missing from DuckDB"
        assert_same_rows(source_rows(source, table, columns), duck_rows(con, table, columns), table)

    return check


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """(proxy, pg_url through the proxy)."""
    url = sa.make_url(pg_url)
    proxy = TcpProxy(url.port or 5432, url.host or "127.0.0.1")
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP endpoint recording the alert webhook's posts."""
    r = Receiver()
    yield r
    r.close()
