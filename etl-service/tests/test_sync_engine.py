"""The incremental engine against a real PostgreSQL source and state store."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from etl_service.lock import SYNC_LOCK_KEY
from etl_service.source import Source

NOW = "(now() AT TIME ZONE 'UTC')"


def _exec(engine: sa.Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)


@pytest.fixture
def source(pg_url):
    engine = create_demo_source(pg_url)
    yield engine
    engine.dispose()


def test_first_cycle_full_load_then_only_the_delta(source, make_engine, same_rows):
    etl = make_engine(BATCH_SIZE="300")
    first = etl.run_cycle()
    assert first.status == "success" and first.published
    assert first.rows["inventory"]["mode"] == "full"
    assert first.rows["inventory"]["rows"] == 1000

    _exec(source, f"UPDATE inventory SET quantity = -1, updated_at = {NOW} WHERE id <= 3")
    _exec(source, f"INSERT INTO inventory VALUES (5001, 1, 'AMS-1', 7, 10, {NOW}, {NOW})")
    second = etl.run_cycle()
    assert second.status == "success" and second.published
    inv = second.rows["inventory"]
    assert inv["mode"] == "incremental"
    assert inv["read"] == 4 and inv["changed"] == 4  # not the whole table
    assert second.rows["products"]["read"] == 0
    for table in ("inventory", "orders", "products"):
        same_rows(source, etl.warehouse.con, table)


def test_nothing_changed_means_nothing_published(source, make_engine):
    etl = make_engine()
    first = etl.run_cycle()
    second = etl.run_cycle()
    assert second.status == "success"
    assert not second.published and second.version == first.version
    # A re-read of the lookback window that finds identical rows is no change.
    _exec(source, f"UPDATE inventory SET updated_at = {NOW} WHERE id = 1")
    third = etl.run_cycle()
    assert third.published and third.version != first.version
    fourth = etl.run_cycle()  # same row re-read inside the lookback: identical
    assert fourth.rows["inventory"]["read"] == 1 and not fourth.published


def test_a_full_refresh_of_unchanged_data_reports_nothing_published(source, make_engine):
    etl = make_engine()
    first = etl.run_cycle()
    # A full load counts every row as changed, so the engine exports and asks
    # the publisher, which finds the same content and uploads nothing.
    again = etl.run_cycle(full_refresh=True)
    assert again.status == "success"
    assert not again.published and again.version == first.version
    assert etl.publisher.current().version == first.version
    assert etl.state.recent_runs(1)[0]["published_version"] is None


def test_watermark_is_the_source_clock_minus_settle_lag_at_full_precision(
    source, make_engine, pg_url
):
    etl = make_engine(SYNC_SETTLE_SECONDS="30")
    etl.run_cycle()
    state = etl.state.table("inventory")
    with source.connect() as conn:
        now = conn.execute(sa.text("SELECT now() AT TIME ZONE 'UTC'")).scalar()
    assert state is not None
    watermark = state.watermark
    assert watermark is not None
    from datetime import datetime

    parsed = datetime.fromisoformat(watermark)
    assert 25 < (now - parsed).total_seconds() < 120
    assert "." in watermark  # microseconds kept, as text
    assert etl.publisher.current().tables["inventory"].watermark == watermark


def test_late_commit_with_an_earlier_timestamp_is_not_lost(source, make_engine, same_rows):
    etl = make_engine(SYNC_SETTLE_SECONDS="0.5", SYNC_LOOKBACK_SECONDS="30")
    etl.run_cycle()
    with source.connect() as late:
        late.execute(
            sa.text(f"UPDATE inventory SET quantity = 4242, updated_at = {NOW} WHERE id = 5")
        )
        # The late transaction's timestamp is already behind the next watermark.
        etl.run_cycle()
        late.commit()
    etl.run_cycle()
    assert etl.warehouse.con.execute("SELECT quantity FROM inventory WHERE id = 5").fetchall() == [
        (4242,)
    ]
    same_rows(source, etl.warehouse.con, "inventory")


def test_crash_between_publish_and_state_commit_rereads_and_stays_correct(
    source, make_engine, same_rows, data_dir: Path, monkeypatch
):
    etl = make_engine()
    etl.run_cycle()
    before = etl.state.table("inventory").watermark
    _exec(source, f"UPDATE inventory SET quantity = 1, updated_at = {NOW} WHERE id <= 10")

    def crash(*_a, **_k):
        raise RuntimeError("killed after publish")

    monkeypatch.setattr(etl.state, "finish_run", crash)
    crashed = etl.run_cycle()
    assert crashed.status == "failed" and "killed" in (crashed.error or "")
    monkeypatch.undo()
    assert etl.state.table("inventory").watermark == before  # not advanced

    _exec(source, "DELETE FROM inventory WHERE id = 11")
    _exec(source, f"UPDATE inventory SET quantity = 2, updated_at = {NOW} WHERE id = 12")
    again = etl.run_cycle(reconcile=True)
    assert again.status == "success"
    assert again.rows["inventory"]["read"] >= 11  # the crashed cycle's delta again
    same_rows(source, etl.warehouse.con, "inventory")
    manifest = etl.publisher.current()
    snap = duckdb.connect(
        str(etl.publisher.fetch_verified(manifest, data_dir / "v")), read_only=True
    )
    try:
        same_rows(source, snap, "inventory")
    finally:
        snap.close()


def test_crash_after_merge_before_publish_still_publishes_next_cycle(
    source, make_engine, monkeypatch
):
    etl = make_engine()
    etl.run_cycle()
    _exec(source, "DELETE FROM inventory WHERE id = 1")

    def boom(*_a, **_k):
        raise RuntimeError("store down")

    monkeypatch.setattr(etl, "_publish", boom)
    assert etl.run_cycle(reconcile=True).status == "failed"
    monkeypatch.undo()
    # The delete is merged but unpublished; the next cycle finds no new change
    # and must publish anyway.
    result = etl.run_cycle()
    assert result.published
    assert etl.publisher.current().tables["inventory"].row_count == 999


def test_hard_deletes_need_reconciliation(source, make_engine):
    etl = make_engine(RECONCILE_INTERVAL_SECONDS="3600")
    etl.run_cycle()
    _exec(source, "DELETE FROM inventory WHERE id IN (1, 2, 3)")
    etl.run_cycle()
    assert etl.warehouse.row_count("inventory") == 1000  # invisible to the cursor
    result = etl.run_cycle(reconcile=True)
    assert result.rows["inventory"]["changed"] == 3
    assert etl.warehouse.row_count("inventory") == 997
    assert etl.state.table("inventory").last_reconciled_at is not None


def test_periodic_reconciliation(source, make_engine):
    etl = make_engine(RECONCILE_INTERVAL_SECONDS="0")
    etl.run_cycle()
    _exec(source, "DELETE FROM orders WHERE id = 7")
    etl.run_cycle()
    assert etl.warehouse.row_count("orders") == 1999


def test_soft_delete_column_removes_rows(pg_url, make_engine):
    engine = sa.create_engine(pg_url)
    _exec(
        engine,
        "CREATE TABLE accounts (id int PRIMARY KEY, name text, deleted_at timestamp,"
        " updated_at timestamp NOT NULL)",
    )
    _exec(
        engine,
        f"INSERT INTO accounts SELECT g, 'a' || g, NULL, {NOW} FROM generate_series(1, 5) g",
    )
    _exec(engine, f"UPDATE accounts SET deleted_at = {NOW} WHERE id = 5")
    etl = make_engine(
        TABLES_TO_SYNC="accounts",
        TABLE_CONFIG='{"accounts": {"soft_delete_column": "deleted_at"}}',
    )
    etl.run_cycle()
    assert etl.warehouse.row_count("accounts") == 4  # full load skips soft-deleted rows
    _exec(engine, f"UPDATE accounts SET deleted_at = {NOW}, updated_at = {NOW} WHERE id = 2")
    result = etl.run_cycle()
    assert result.rows["accounts"]["changed"] == 1
    ids = [
        r[0] for r in etl.warehouse.con.execute("SELECT id FROM accounts ORDER BY id").fetchall()
    ]
    assert ids == [1, 3, 4]
    engine.dispose()


def test_new_source_column_appears_next_cycle_with_values(source, make_engine, same_rows):
    etl = make_engine()
    etl.run_cycle()
    _exec(source, "ALTER TABLE products ADD COLUMN weight_kg numeric(9,3) DEFAULT 1.250")
    result = etl.run_cycle()
    assert result.rows["products"]["mode"] == "full"
    assert result.rows["products"]["reason"] == "columns changed"
    assert ("weight_kg", "DECIMAL(9,3)") in etl.warehouse.columns("products")
    same_rows(source, etl.warehouse.con, "products")
    assert result.rows["inventory"]["mode"] == "incremental"
    manifest = etl.publisher.current()
    assert "weight_kg" in [c.name for c in manifest.tables["products"].columns]


def test_table_without_cursor_is_fully_refreshed(pg_url, make_engine, same_rows):
    engine = sa.create_engine(pg_url)
    _exec(engine, "CREATE TABLE rates (code text PRIMARY KEY, rate numeric(10,6))")
    _exec(engine, "INSERT INTO rates VALUES ('EUR', 1), ('USD', 1.084512)")
    etl = make_engine(TABLES_TO_SYNC="rates")
    first = etl.run_cycle()
    assert first.rows["rates"]["reason"] == "no cursor column"
    assert not etl.run_cycle().published  # same contents: nothing to publish
    _exec(engine, "UPDATE rates SET rate = 1.1 WHERE code = 'USD'")
    assert etl.run_cycle().published
    same_rows(engine, etl.warehouse.con, "rates")
    engine.dispose()


def test_table_without_primary_key_is_refused_for_incremental(pg_url, make_engine):
    engine = create_demo_source(pg_url)
    _exec(engine, f"CREATE TABLE events (kind text, updated_at timestamp DEFAULT {NOW})")
    _exec(engine, "INSERT INTO events (kind) VALUES ('a')")
    etl = make_engine(TABLES_TO_SYNC="events,inventory")
    result = etl.run_cycle()
    assert result.status == "partial"
    assert "has no primary key" in result.failed_tables["events"]
    assert result.rows["inventory"]["rows"] == 1000  # the others still sync
    [entry] = etl.state.dead_letters()
    assert entry["table_name"] == "events" and entry["attempts"] == 1  # permanent: no retry
    engine.dispose()


def test_duplicate_keys_in_one_delta_collapse_to_the_latest(tmp_path):
    import pyarrow as pa

    from etl_service.warehouse import Warehouse

    wh = Warehouse(tmp_path / "w.duckdb")
    cols = [("id", "INTEGER"), ("v", "VARCHAR"), ("ts", "TIMESTAMP")]

    def reader(rows):
        table = pa.table(
            {
                "id": [r[0] for r in rows],
                "v": [r[1] for r in rows],
                "ts": pa.array([r[2] for r in rows], pa.timestamp("us")),
            }
        )
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    from datetime import datetime

    t = [datetime(2026, 1, 1, 0, 0, i) for i in range(4)]
    wh.replace_table("x", reader([(1, "a", t[0])]), cols)
    result = wh.merge(
        "x",
        reader([(1, "old", t[1]), (1, "new", t[3]), (2, "b", t[2]), (1, "mid", t[2])]),
        cols,
        primary_key=["id"],
        cursor="ts",
    )
    assert result.read == 2 and result.upserted == 2
    assert wh.con.execute("SELECT id, v FROM x ORDER BY id").fetchall() == [(1, "new"), (2, "b")]
    wh.close()


def test_one_snapshot_for_all_tables_of_a_cycle(source, pg_url):
    """ConnectorX reads through the exported snapshot, not the latest data."""
    src = Source(pg_url)
    snap = src.begin_read(0)
    try:
        _exec(source, "UPDATE inventory SET quantity = -99 WHERE id = 1")
        _exec(source, "DELETE FROM orders WHERE id = 1")
        inv = src.read("SELECT quantity FROM inventory WHERE id = 1", 100, snap).read_all()
        orders = src.read("SELECT count(*) AS n FROM orders", 100, snap).read_all()
        assert inv.column("quantity").to_pylist() != [-99]
        assert orders.column("n").to_pylist() == [2000]
        fresh = src.read("SELECT quantity FROM inventory WHERE id = 1", 100).read_all()
        assert fresh.column("quantity").to_pylist() == [-99]
    finally:
        snap.close()
        src.close()


def test_second_replica_skips_while_the_lock_is_held(source, make_engine, pg_url):
    etl = make_engine()
    holder = sa.create_engine(pg_url)
    with holder.connect() as conn:
        assert conn.execute(sa.text(f"SELECT pg_try_advisory_lock({SYNC_LOCK_KEY})")).scalar()
        assert etl.run_cycle().status == "skipped"
        conn.execute(sa.text(f"SELECT pg_advisory_unlock({SYNC_LOCK_KEY})"))
    holder.dispose()
    assert etl.run_cycle().status == "success"


def test_sqlite_state_store_uses_a_file_lock(source, make_engine, data_dir):
    etl = make_engine(DATABASE_URL=f"sqlite:///{data_dir / 'state.db'}")
    other = make_engine(DATABASE_URL=f"sqlite:///{data_dir / 'state.db'}")
    results: dict[str, str] = {}
    with other.lock.hold() as held:
        assert held
        t = threading.Thread(target=lambda: results.update(a=etl.run_cycle().status))
        t.start()
        t.join(60)
    assert results["a"] == "skipped"
    assert etl.run_cycle().status == "success"
