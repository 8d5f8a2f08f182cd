"""Models (views and rollups as SQL files) built into every snapshot, against a
real PostgreSQL source and state store."""

from __future__ import annotations

import decimal
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from etl_service.errors import ModelDefinitionError
from etl_service.models import BUNDLED_MODELS_DIR, load_models, usable_models

NOW = "(now() AT TIME ZONE 'UTC')"


def _exec(engine: sa.Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql))


def _write(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.sql").write_text(text)


@pytest.fixture
def source(pg_url):
    engine = create_demo_source(pg_url)
    yield engine
    engine.dispose()


def _published(etl, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """The current version's snapshot, as the API would open it."""
    from analytics_shared.snapshot_file import fetch_verified, probe

    manifest = etl.publisher.current()
    dest = tmp_path / f"published-{manifest.version}.db"
    if not dest.exists():
        fetch_verified(etl.publisher.store, manifest, dest)
    con = duckdb.connect(str(dest), read_only=True)
    probe(con, manifest)
    return con


# -- definitions -------------------------------------------------------------


def test_dependencies_come_from_the_parser_and_set_the_build_order(tmp_path):
    folder = tmp_path / "models"
    # Alphabetical order would build a_top first; it reads m_mid, which reads z_base.
    _write(folder, "a_top", "-- materialized: table\nSELECT count(*) AS n FROM m_mid")
    _write(
        folder,
        "m_mid",
        "-- description: middle\n"
        "WITH inventory AS (SELECT 1 AS x) SELECT x FROM inventory JOIN z_base ON true",
    )
    _write(folder, "z_base", "SELECT id FROM orders")
    models = load_models(folder)
    assert [m.name for m in models] == ["z_base", "m_mid", "a_top"]
    mid = models[1]
    # The CTE named like a table is not a dependency on that table.
    assert mid.references == {"z_base"} and mid.description == "middle"
    assert mid.materialized == "view" and models[2].materialized == "table"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"a": "SELECT * FROM b", "b": "SELECT * FROM c", "c": "SELECT * FROM a"},
            "a -> b -> c -> a",
        ),
        ({"a": "SELECT 1; SELECT 2"}, "exactly one SELECT"),
        ({"a": "DELETE FROM orders"}, "exactly one SELECT"),
        ({"a": "-- materialized: index\nSELECT 1"}, "'view' or 'table'"),
        ({"a": "-- owner: me\nSELECT 1"}, "unknown front-matter key 'owner'"),
        ({"a": "SELEC 1"}, "model 'a'"),
    ],
)
def test_bad_model_folders_are_refused_with_the_reason(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path, name, text)
    with pytest.raises(ModelDefinitionError, match=message.replace("(", r"\(")):
        load_models(tmp_path)


def test_operator_models_must_read_synced_tables_bundled_ones_are_left_out(tmp_path):
    _write(tmp_path, "by_customer", "SELECT customer_id, count(*) FROM orders GROUP BY 1")
    with pytest.raises(ModelDefinitionError, match=r"reads \['orders'\]"):
        usable_models(load_models(tmp_path), ["inventory"], strict=True)
    bundled = usable_models(
        load_models(BUNDLED_MODELS_DIR), ["inventory", "products"], strict=False
    )
    assert [m.name for m in bundled] == ["stock_by_warehouse_product", "v_inventory_summary"]


# -- the cycle -----------------------------------------------------------------


def _pg_rows(source: sa.Engine, sql: str) -> set[tuple]:
    with source.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.text(sql)).all()}


def _duck_rows(con: duckdb.DuckDBPyConnection, sql: str) -> set[tuple]:
    return {tuple(r) for r in con.execute(sql).fetchall()}


def _assert_models_match_source(con: duckdb.DuckDBPyConnection, source: sa.Engine) -> None:
    """Each bundled model equals the same question asked of PostgreSQL directly."""
    [(items, quantity, price, oldest, latest)] = _duck_rows(
        con, "SELECT * FROM v_inventory_summary"
    )
    [pg] = _pg_rows(
        source,
        "SELECT count(*), coalesce(sum(i.quantity), 0), avg(p.unit_price),"
        " min(i.updated_at), max(i.updated_at)"
        " FROM inventory i LEFT JOIN products p ON p.id = i.product_id",
    )
    assert (items, quantity, oldest, latest) == (pg[0], pg[1], pg[3], pg[4])
    assert abs(decimal.Decimal(str(price)) - pg[2]) < decimal.Decimal("1e-9")
    assert _duck_rows(
        con, "SELECT order_date, status, currency, orders, revenue FROM order_revenue_daily"
    ) == _pg_rows(
        source,
        "SELECT created_at::date, status, currency, count(*), sum(total_amount)"
        " FROM orders GROUP BY 1, 2, 3",
    )
    assert _duck_rows(
        con, "SELECT warehouse, product_id, sku, quantity FROM stock_by_warehouse_product"
    ) == _pg_rows(
        source,
        "SELECT i.warehouse, i.product_id, p.sku, sum(i.quantity)"
        " FROM inventory i LEFT JOIN products p ON p.id = i.product_id GROUP BY 1, 2, 3",
    )


def test_bundled_models_equal_the_same_select_on_the_source_after_updates_and_deletes(
    source, make_engine, tmp_path
):
    etl = make_engine(RECONCILE_INTERVAL_SECONDS="0")
    first = etl.run_cycle()
    assert first.status == "success" and first.published
    assert sorted(first.models_rebuilt) == [
        "order_revenue_daily",
        "stock_by_warehouse_product",
        "v_inventory_summary",
    ]
    manifest = etl.publisher.current()
    assert manifest.models["v_inventory_summary"].kind == "view"
    assert manifest.models["v_inventory_summary"].row_count == 1
    assert manifest.models["order_revenue_daily"].depends_on == ["orders"]
    assert [c.name for c in manifest.models["v_inventory_summary"].columns] == [
        "total_items",
        "total_quantity",
        "average_price",
        "oldest_update",
        "latest_update",
    ]
    _assert_models_match_source(_published(etl, tmp_path), source)

    # Updates, inserts, soft-irrelevant status moves and hard deletes on both inputs.
    _exec(
        source, f"UPDATE inventory SET quantity = quantity + 7, updated_at = {NOW} WHERE id % 9 = 0"
    )
    _exec(source, "DELETE FROM inventory WHERE id % 13 = 0")
    _exec(source, f"INSERT INTO inventory VALUES (9001, 3, 'AMS-1', 5, 10, {NOW}, {NOW})")
    _exec(source, f"UPDATE orders SET status = 'refunded', updated_at = {NOW} WHERE id % 7 = 0")
    _exec(source, "DELETE FROM orders WHERE id % 11 = 0")
    second = etl.run_cycle()
    assert second.status == "success" and second.published, second.error
    _assert_models_match_source(_published(etl, tmp_path), source)


def test_table_models_rebuild_only_when_an_input_changed_and_unchanged_cycles_publish_nothing(
    source, make_engine
):
    etl = make_engine()
    first = etl.run_cycle()
    quiet = etl.run_cycle()
    assert not quiet.published and quiet.version == first.version
    assert quiet.models_rebuilt == []

    _exec(source, f"UPDATE orders SET status = 'shipped', updated_at = {NOW} WHERE id = 1")
    orders_only = etl.run_cycle()
    assert orders_only.published
    assert orders_only.models_rebuilt == ["order_revenue_daily"]
    manifest = etl.publisher.current()
    assert manifest.models["stock_by_warehouse_product"].row_count > 0


def test_a_failing_model_fails_the_cycle_names_itself_and_publishes_nothing(
    source, make_engine, tmp_path
):
    folder = tmp_path / "models"
    _write(
        folder,
        "stock",
        "-- materialized: table\nSELECT warehouse, sum(quantity) AS q FROM inventory GROUP BY 1",
    )
    etl = make_engine(MODELS_DIR=str(folder))
    first = etl.run_cycle()
    assert first.published and set(etl.publisher.current().models) == {"stock"}

    # A model that only fails on the data (a cast), and a source change to publish.
    _write(
        folder,
        "broken_totals",
        "-- materialized: table\nSELECT CAST(warehouse AS INTEGER) AS w FROM inventory",
    )
    _exec(source, f"UPDATE inventory SET quantity = 0, updated_at = {NOW} WHERE id = 1")
    etl2 = make_engine(MODELS_DIR=str(folder))
    failed = etl2.run_cycle()
    assert failed.status == "failed" and not failed.published
    assert "model 'broken_totals' failed to build" in failed.error
    assert "Conversion Error" in failed.error  # DuckDB's own message
    assert etl2.publisher.current().version == first.version  # the old version serves
    letters = etl2.state.dead_letters()
    assert any("broken_totals" in d["error"] for d in letters)
    # The working DuckDB kept the old models (the build was rolled back).
    assert not etl2.warehouse.has_table("broken_totals")

    (folder / "broken_totals.sql").unlink()
    etl3 = make_engine(MODELS_DIR=str(folder))
    fixed = etl3.run_cycle()
    assert fixed.status == "success" and fixed.published
    # The merge of the failed cycle is published now, and the rollup follows it.
    assert fixed.models_rebuilt == ["stock"]
    snap = etl3.publisher.current()
    assert set(snap.models) == {"stock"}
    assert etl3.state.dead_letters() == []


def test_an_edited_or_removed_model_file_is_published_without_a_data_change(
    source, make_engine, tmp_path
):
    folder = tmp_path / "models"
    _write(folder, "summary", "-- description: one\nSELECT count(*) AS n FROM inventory")
    _write(folder, "gone", "SELECT 1 AS x FROM orders LIMIT 1")
    first = make_engine(MODELS_DIR=str(folder)).run_cycle()
    assert first.published

    _write(folder, "summary", "-- description: two\nSELECT count(*) AS n FROM inventory")
    (folder / "gone.sql").unlink()
    etl = make_engine(MODELS_DIR=str(folder))
    second = etl.run_cycle()
    assert second.published and second.version != first.version
    manifest = etl.publisher.current()
    assert set(manifest.models) == {"summary"}
    assert manifest.models["summary"].description == "two"
    views = etl.warehouse.con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal"
    ).fetchall()
    assert views == [("summary",)]
    assert not etl.run_cycle().published  # and then it is quiet again
