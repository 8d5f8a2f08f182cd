"""Differential correctness: a busy writer vs. the ETL cycling, then row-for-row equality.

The writer inserts, updates (many rows per transaction, so ties on
updated_at), deletes, and holds some transactions open so they commit late
with an earlier updated_at. After the writer stops and one more cycle runs,
the working DuckDB and the published snapshot must equal the source.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from testsupport.source_writers import writers_running

TABLES = ("inventory", "orders")


def _add_integer_cursor(engine: sa.Engine) -> None:
    """A `change_seq` column every write takes from one sequence (like an
    identity or a SQL Server rowversion): a transaction that takes its value
    early and commits late is what an integer cursor must not lose."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SEQUENCE change_seq"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION bump_change_seq() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN NEW.change_seq := nextval('change_seq'); RETURN NEW; END $$"
            )
        )
        for table in TABLES:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN change_seq bigint"))
            conn.execute(sa.text(f"UPDATE {table} SET change_seq = nextval('change_seq')"))
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {table}_change_seq BEFORE INSERT OR UPDATE ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION bump_change_seq()"
                )
            )
        # Rows the writers never touch stay far below every later delta's window.
        conn.execute(sa.text("SELECT setval('change_seq', 1000000)"))


# A late commit takes its value up to ~1.5 s before committing; the writers
# take a few hundred values a second: 3,000 values back covers it with margin.
INTEGER_CURSOR = {
    table: {"cursor_column": "change_seq", "cursor_lookback": 3000} for table in TABLES
}


@pytest.mark.parametrize(
    ("seed", "cursor"),
    [(11, "updated_at"), (22, "updated_at"), (33, "updated_at"), (44, "integer"), (55, "integer")],
)
def test_duckdb_equals_source_after_concurrent_changes(
    seed, cursor, pg_url, make_engine, same_rows, data_dir: Path
) -> None:
    source = create_demo_source(pg_url, seed=seed)
    extra = {}
    if cursor == "integer":
        _add_integer_cursor(source)
        extra["TABLE_CONFIG"] = json.dumps(INTEGER_CURSOR)
    etl = make_engine(
        TABLES_TO_SYNC=",".join(TABLES),
        SYNC_SETTLE_SECONDS="1",
        SYNC_LOOKBACK_SECONDS="10",
        RECONCILE_INTERVAL_SECONDS="2",
        **extra,
    )
    assert etl.run_cycle().status == "success"

    cycles = 0
    with writers_running(source, seed) as stats:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            result = etl.run_cycle()
            assert result.status == "success", result.error
            cycles += 1
            time.sleep(0.3)
    assert cycles >= 3 and stats["late"] >= 2 and stats["deletes"] >= 3, (cycles, stats)

    final = etl.run_cycle(reconcile=True)
    assert final.status == "success", final.error

    manifest = etl.publisher.current()
    assert manifest is not None
    published = etl.publisher.fetch_verified(manifest, data_dir / "check")
    snap = duckdb.connect(str(published), read_only=True)
    try:
        for table in TABLES:
            same_rows(source, etl.warehouse.con, table)
            same_rows(source, snap, table)
        if cursor == "integer":
            # Deltas read the last 3,000 cursor values (the rows the writers
            # touched), not the whole table.
            again = etl.run_cycle()
            with source.connect() as conn:
                expected = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM orders WHERE change_seq >="
                        " (SELECT max(change_seq) FROM orders) - 3000"
                    )
                ).scalar()
            assert again.rows["orders"]["mode"] == "incremental"
            assert 0 < again.rows["orders"]["read"] == expected < 2000
    finally:
        snap.close()
        source.dispose()
