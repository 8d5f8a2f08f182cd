"""Warehouse.merge and replace_table on in-memory Arrow data (no source database)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from etl_service.warehouse import Columns, Warehouse

T = [datetime(2026, 1, 1, 0, 0, i) for i in range(10)]
COLS: Columns = [("id", "INTEGER"), ("v", "VARCHAR"), ("ts", "TIMESTAMP")]


def batches(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> pa.RecordBatchReader:
    data = {}
    for i, name in enumerate(columns):
        values = [r[i] for r in rows]
        data[name] = pa.array(values, pa.timestamp("us")) if name == "ts" else values
    table = pa.table(data)
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[Warehouse]:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.replace_table("x", batches(["id", "v", "ts"], [(1, "a", T[0]), (2, "b", T[0])]), COLS)
    yield warehouse
    warehouse.close()


def rows(wh: Warehouse, table: str = "x") -> list[tuple[Any, ...]]:
    return wh.con.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def merge(wh: Warehouse, data: list[tuple[Any, ...]], **kwargs: Any) -> Any:
    columns = kwargs.pop("columns", COLS)
    names = [n for n, _ in columns]
    return wh.merge("x", batches(names, data), columns, primary_key=["id"], cursor="ts", **kwargs)


def test_inserts_and_updates_by_primary_key(wh: Warehouse) -> None:
    result = merge(wh, [(2, "b2", T[1]), (3, "c", T[1])])
    assert (result.read, result.upserted, result.deleted) == (2, 2, 0)
    assert rows(wh) == [(1, "a", T[0]), (2, "b2", T[1]), (3, "c", T[1])]
    assert wh.row_count("x") == 3


def test_rows_identical_to_the_table_are_not_changes(wh: Warehouse) -> None:
    result = merge(wh, [(1, "a", T[0]), (2, "b", T[0])])
    assert (result.read, result.changed) == (2, 0)
    assert rows(wh) == [(1, "a", T[0]), (2, "b", T[0])]


def test_duplicate_keys_in_one_delta_collapse_to_the_latest(wh: Warehouse) -> None:
    result = merge(wh, [(1, "old", T[1]), (1, "new", T[3]), (4, "d", T[2]), (1, "mid", T[2])])
    assert (result.read, result.upserted) == (2, 2)
    assert rows(wh) == [(1, "new", T[3]), (2, "b", T[0]), (4, "d", T[2])]


def test_a_set_boolean_soft_delete_column_removes_the_row(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    cols: Columns = [("id", "INTEGER"), ("gone", "BOOLEAN"), ("ts", "TIMESTAMP")]
    names = ["id", "gone", "ts"]
    initial = [(1, False, T[0]), (2, None, T[0]), (3, True, T[0])]
    loaded, _ = wh.replace_table("x", batches(names, initial), cols, soft_delete="gone")
    assert loaded == 2  # a full load skips soft-deleted rows
    result = wh.merge(
        "x",
        batches(names, [(1, True, T[1]), (5, True, T[1]), (6, False, T[1])]),
        cols,
        primary_key=["id"],
        cursor="ts",
        soft_delete="gone",
    )
    assert (result.upserted, result.deleted) == (1, 1)  # 5 was never there
    assert [r[0] for r in rows(wh)] == [2, 6]
    wh.close()


def test_a_set_timestamp_soft_delete_column_removes_the_row(wh: Warehouse) -> None:
    cols: Columns = [*COLS, ("deleted_at", "TIMESTAMP")]
    names = [n for n, _ in cols]
    wh.replace_table("x", batches(names, [(1, "a", T[0], None), (2, "b", T[0], None)]), cols)
    deleted = pa.array([T[2]], pa.timestamp("us"))
    table = pa.table(
        {
            "id": [2],
            "v": ["b"],
            "ts": pa.array([T[2]], pa.timestamp("us")),
            "deleted_at": deleted,
        }
    )
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    result = wh.merge("x", reader, cols, primary_key=["id"], cursor="ts", soft_delete="deleted_at")
    assert result.deleted == 1 and [r[0] for r in rows(wh)] == [1]
    assert wh.row_count("x") == 1


def test_a_column_added_in_the_source_is_swapped_in_then_merged(wh: Warehouse) -> None:
    cols: Columns = [*COLS, ("qty", "BIGINT")]
    names = [n for n, _ in cols]
    loaded, changed = wh.replace_table(
        "x", batches(names, [(1, "a", T[0], 10), (2, "b", T[0], 20)]), cols
    )
    assert (loaded, changed) == (2, True)
    assert [n for n, _ in wh.columns("x")] == names
    result = merge(wh, [(2, "b", T[1], 21)], columns=cols)
    assert result.upserted == 1
    assert rows(wh) == [(1, "a", T[0], 10), (2, "b", T[1], 21)]


def test_replace_table_reports_no_change_for_identical_contents(wh: Warehouse) -> None:
    data = [(1, "a", T[0]), (2, "b", T[0])]
    assert wh.replace_table("x", batches(["id", "v", "ts"], data), COLS, detect_changes=True) == (
        2,
        False,
    )
    data[1] = (2, "B", T[0])
    assert wh.replace_table("x", batches(["id", "v", "ts"], data), COLS, detect_changes=True) == (
        2,
        True,
    )
