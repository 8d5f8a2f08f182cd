"""A large source table of random values in PostgreSQL, its changes, and checksums.

Shared by the ETL-at-scale test (tests/test_etl_memory_fit.py) and the scaling
benchmark (benchmarks/etl_scaling.py):

- `create_random_inventory` builds `inventory` (9 columns: ids, integers,
  varchar(16), numeric(12,2), md5 text, two timestamps) with one
  INSERT ... SELECT of random() expressions into an UNLOGGED table (10,000,000
  rows take about a minute), then its primary key and cursor index;
- `change_rows` updates, inserts and deletes rows as an application would;
- `source_checksum` and `snapshot_checksum` compute the same order-independent
  checksum (row count, and the sum of a 60-bit md5 of each row's text) in
  PostgreSQL and in DuckDB, each by its own SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import sqlalchemy as sa

__all__ = [
    "change_rows",
    "create_random_inventory",
    "random_source_database",
    "snapshot_checksum",
    "source_checksum",
]


def _psycopg(url: str) -> sa.URL:
    return sa.make_url(url).set(drivername="postgresql+psycopg")


@contextmanager
def random_source_database(admin_url: str, rows: int, seed: float = 0.42) -> Iterator[str]:
    """A fresh database holding a random `inventory` of `rows` rows; its URL.
    Dropped afterwards."""
    name = f"rand_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_psycopg(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = _psycopg(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        create_random_inventory(url, rows, seed)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def create_random_inventory(url: str, rows: int, seed: float = 0.42) -> None:
    engine = sa.create_engine(_psycopg(url), isolation_level="AUTOCOMMIT")
    statements = [
        "CREATE UNLOGGED TABLE inventory (id integer NOT NULL, product_id integer NOT NULL,"
        " warehouse varchar(16) NOT NULL, quantity integer NOT NULL,"
        " reorder_level integer NOT NULL, unit_cost numeric(12,2) NOT NULL,"
        " sku text NOT NULL, created_at timestamp NOT NULL,"
        " updated_at timestamp NOT NULL)",
        f"SELECT setseed({seed})",
        "INSERT INTO inventory SELECT g, (random() * 50000)::int + 1,"
        " (ARRAY['AMS-1','BER-2','NYC-1','SFO-3','SIN-1','LON-2','PAR-1'])"
        "[1 + floor(random() * 7)::int],"
        " (random() * 1000)::int, (random() * 200)::int,"
        " round((random() * 100000)::numeric, 2), md5(random()::text),"
        " timestamp '2024-01-01' + random() * interval '700 days',"
        " timestamp '2025-12-01' + random() * interval '20 days'"
        " FROM generate_series(1, :rows) g",
        "ALTER TABLE inventory ADD PRIMARY KEY (id)",
        "CREATE INDEX inventory_updated_at ON inventory (updated_at)",
        "VACUUM ANALYZE inventory",
    ]
    with engine.connect() as conn:
        # A session of its own: setseed() then applies to the INSERT's random().
        for sql in statements:
            conn.execute(sa.text(sql), {"rows": rows} if ":rows" in sql else {})
    engine.dispose()


def change_rows(url: str, updates: int, inserts: int = 0, deletes: int = 0) -> None:
    """`updates` random rows get new values and updated_at = now(); `inserts`
    new rows after the largest id; `deletes` random rows are removed."""
    engine = sa.create_engine(_psycopg(url))
    with engine.begin() as conn:
        top = int(conn.execute(sa.text("SELECT max(id) FROM inventory")).scalar_one())
        conn.execute(
            sa.text(
                "UPDATE inventory SET quantity = (random() * 1000)::int,"
                " unit_cost = round((random() * 100000)::numeric, 2),"
                " sku = md5(random()::text), updated_at = clock_timestamp()"
                " WHERE id IN (SELECT DISTINCT (random() * (:top - 1))::int + 1"
                " FROM generate_series(1, :n * 2) LIMIT :n)"
            ),
            {"top": top, "n": updates},
        )
        if inserts:
            conn.execute(
                sa.text(
                    "INSERT INTO inventory SELECT :top + g, (random() * 50000)::int + 1,"
                    " 'NEW-1', (random() * 1000)::int, 10,"
                    " round((random() * 100000)::numeric, 2), md5(random()::text),"
                    " clock_timestamp(), clock_timestamp() FROM generate_series(1, :n) g"
                ),
                {"top": top, "n": inserts},
            )
        if deletes:
            conn.execute(
                sa.text(
                    "DELETE FROM inventory WHERE id IN (SELECT DISTINCT"
                    " (random() * (:top - 1))::int + 1 FROM generate_series(1, :n))"
                ),
                {"top": top, "n": deletes},
            )
    engine.dispose()


def source_checksum(url: str) -> tuple[int, int]:
    """(rows, sum of each row's 60-bit md5) computed by PostgreSQL."""
    engine = sa.create_engine(_psycopg(url))
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*), coalesce(sum(('x' || substr(md5(concat_ws('|', id,"
                " product_id, warehouse, quantity, reorder_level, unit_cost, sku,"
                " (extract(epoch FROM created_at) * 1000000)::bigint,"
                " (extract(epoch FROM updated_at) * 1000000)::bigint)), 1, 15))"
                "::bit(60)::bigint), 0) FROM inventory"
            )
        ).one()
    engine.dispose()
    return int(row[0]), int(row[1])


def snapshot_checksum(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """The same checksum as `source_checksum`, computed by DuckDB."""
    row = con.execute(
        "SELECT count(*), coalesce(sum(('0x' || substr(md5(concat_ws('|', id,"
        " product_id, warehouse, quantity, reorder_level, unit_cost, sku,"
        " epoch_us(created_at), epoch_us(updated_at))), 1, 15))::BIGINT::HUGEINT), 0)"
        " FROM inventory"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
