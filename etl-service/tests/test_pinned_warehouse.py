"""Pinned behaviours of warehouse.py: row counts, inspection, failed writes,
keys named like DuckDB's rowid, NULLs, reconciliation and lake mode's change
records. In-memory Arrow data into a real DuckDB file (no source database):
the fast tests `make mutation MODULES=warehouse` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl_service.warehouse import Columns, MergeResult, Warehouse

COLS: Columns = [("id", "INTEGER"), ("v", "VARCHAR"), ("n", "BIGINT")]
NAMES = [n for n, _ in COLS]


def reader(names: list[str], rows: list[tuple[Any, ...]]) -> pa.RecordBatchReader:
    table = pa.table({name: [r[i] for r in rows] for i, name in enumerate(names)})
    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def keys(rows: list[int]) -> pa.RecordBatchReader:
    return reader(["id"], [(k,) for k in rows])


def content(wh: Warehouse, table: str = "x") -> list[tuple[Any, ...]]:
    return wh.con.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()


def true_count(wh: Warehouse, table: str = "x") -> int:
    return int(wh.con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0])


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[Warehouse]:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.replace_table("x", reader(NAMES, [(1, "a", 1), (2, "b", 2), (3, "c", 3)]), COLS)
    yield warehouse
    warehouse.close()


def merge(wh: Warehouse, rows: list[tuple[Any, ...]], **kw: Any) -> MergeResult:
    return wh.merge("x", reader(NAMES, rows), COLS, primary_key=["id"], cursor=None, **kw)


def test_row_counts_follow_every_write(wh: Warehouse) -> None:
    assert wh.row_count("x") == 3
    result = merge(wh, [(3, "c3", 3), (4, "d", 4), (5, "e", 5)])
    assert (result.read, result.upserted, result.deleted, result.changed) == (3, 3, 0, 3)
    assert wh.row_count("x") == true_count(wh) == 5
    assert wh.reconcile("x", keys([1, 4, 5]), [("id", "INTEGER")]) == 2
    assert wh.row_count("x") == true_count(wh) == 3
    # A count nobody cached yet is read from the table.
    fresh = Warehouse(wh.path.with_name("other.duckdb"))
    fresh.con.execute("CREATE TABLE y AS SELECT range AS id FROM range(4)")
    assert fresh.row_count("y") == 4
    fresh.close()


def test_a_merge_into_an_uncounted_table_leaves_it_uncounted(wh: Warehouse) -> None:
    wh._rows.clear()
    merge(wh, [(9, "z", 9)])
    assert wh.row_count("x") == 4
    wh._rows.clear()
    wh.reconcile("x", keys([1]), [("id", "INTEGER")])
    assert wh.row_count("x") == 1


def test_columns_and_types_of_the_working_table(wh: Warehouse) -> None:
    assert wh.columns("x") == [("id", "INTEGER"), ("v", "VARCHAR"), ("n", "BIGINT")]
    assert wh.columns("missing") == [] and not wh.has_table("missing") and wh.has_table("x")
    # Only the main schema of the working database counts.
    wh.con.execute("CREATE SCHEMA other; CREATE TABLE other.z (a INT)")
    wh.con.execute("CREATE TEMP TABLE z (a INT)")
    assert wh.columns("z") == [] and not wh.has_table("z")
    assert wh.canonical_type("REAL") == "FLOAT"
    assert wh.canonical_type("INT8") == "BIGINT"
    assert wh.canonical_type("REAL") == "FLOAT"  # cached: same answer


def test_max_value_is_the_largest_value_as_text(wh: Warehouse) -> None:
    merge(wh, [(1000, "k", 999)])
    assert wh.max_value("x", "id") == "1000"
    assert wh.max_value("x", "n") == "999"
    wh.con.execute("DELETE FROM x")
    assert wh.max_value("x", "id") is None


def test_a_failed_write_changes_nothing_and_the_next_one_works(wh: Warehouse) -> None:
    bad = reader(["id", "v", "n"], [(7, "g", "not a number")])
    with pytest.raises(duckdb.ConversionException):
        wh.merge("x", bad, COLS, primary_key=["id"], cursor=None)
    assert content(wh) == [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    assert wh.con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchall() == [
        (0,)
    ]
    with pytest.raises(duckdb.ConversionException):
        wh.replace_table("x", reader(["id", "v", "n"], [(7, "g", "nan?")]), COLS)
    assert content(wh) == [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    assert wh.con.execute("SELECT current_setting('threads')").fetchall()[0][0] > 1
    assert merge(wh, [(7, "g", 7)]).upserted == 1
    assert wh.row_count("x") == true_count(wh) == 4


def test_a_full_load_restores_the_thread_setting(wh: Warehouse) -> None:
    wh.con.execute("SET threads = 3")
    wh.replace_table("x", reader(NAMES, [(1, "a", 1)]), COLS)
    assert wh.con.execute("SELECT current_setting('threads')").fetchall() == [(3,)]


def test_a_full_load_counts_rows_and_compares_only_the_same_shape(wh: Warehouse) -> None:
    same = [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    # Unless asked to compare, a full load counts as a change.
    assert wh.replace_table("x", reader(NAMES, same), COLS) == (3, True)
    assert wh.replace_table("x", reader(NAMES, same), COLS, detect_changes=True) == (3, False)
    # A row fewer, a duplicate more: EXCEPT ALL sees both.
    dup = [(1, "a", 1), (1, "a", 1), (2, "b", 2)]
    assert wh.replace_table("x", reader(NAMES, dup), COLS, detect_changes=True) == (3, True)
    assert wh.replace_table("x", reader(NAMES, same), COLS, detect_changes=True) == (3, True)
    # Another column set is a change, without comparing.
    wider: Columns = [*COLS, ("w", "INTEGER")]
    rows4 = [(*r, 0) for r in same]
    assert wh.replace_table("x", reader([*NAMES, "w"], rows4), wider, detect_changes=True) == (
        3,
        True,
    )
    narrower = wh.replace_table("x", reader(NAMES, same), COLS, detect_changes=True)
    assert narrower == (3, True)
    assert wh.replace_table("x", reader(NAMES, []), COLS) == (0, True)
    assert wh.row_count("x") == 0 and wh.columns("x") == list(COLS)


def test_nulls_compare_as_equal_so_only_real_changes_count(wh: Warehouse) -> None:
    merge(wh, [(1, None, 1)])
    assert merge(wh, [(1, None, 1)]).changed == 0  # NULL = NULL: no change
    assert merge(wh, [(1, "a", 1)]).changed == 1
    assert merge(wh, [(1, "a", None)]).changed == 1
    assert content(wh)[0] == (1, "a", None)


def test_a_column_named_rowid_deletes_by_key(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    cols: Columns = [("rowid", "BIGINT"), ("v", "VARCHAR")]
    wh.replace_table("r", reader(["rowid", "v"], [(10, "a"), (20, "b")]), cols)
    result = wh.merge(
        "r",
        reader(["rowid", "v"], [(20, "B"), (30, "c")]),
        cols,
        primary_key=["rowid"],
        cursor=None,
    )
    assert (result.upserted, wh.row_count("r")) == (2, 3)
    assert content(wh, "r") == [(10, "a"), (20, "B"), (30, "c")]
    wh.close()


def test_a_column_named_rowid_that_is_not_the_key_may_be_null(tmp_path: Path) -> None:
    """Rows are then found by the key, not by the (NULL) column named rowid."""
    wh = Warehouse(tmp_path / "w.duckdb")
    cols: Columns = [("id", "INTEGER"), ("rowid", "BIGINT"), ("v", "VARCHAR")]
    wh.replace_table("r", reader(["id", "rowid", "v"], [(1, None, "a")]), cols)
    result = wh.merge(
        "r", reader(["id", "rowid", "v"], [(1, None, "b")]), cols, primary_key=["id"], cursor=None
    )
    assert result.upserted == 1 and content(wh, "r") == [(1, None, "b")]
    assert wh.row_count("r") == 1
    wh.close()


def test_a_composite_key_matches_on_every_column(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    cols: Columns = [("a", "INTEGER"), ("b", "INTEGER"), ("v", "VARCHAR")]
    wh.replace_table("c", reader(["a", "b", "v"], [(1, 1, "x"), (1, 2, "y")]), cols)
    wh.merge("c", reader(["a", "b", "v"], [(1, 2, "Y")]), cols, primary_key=["a", "b"], cursor=None)
    assert content(wh, "c") == [(1, 1, "x"), (1, 2, "Y")]
    assert wh.reconcile("c", reader(["a", "b"], [(1, 2)]), cols[:2]) == 1
    assert content(wh, "c") == [(1, 2, "Y")]
    wh.close()


def test_a_soft_delete_of_an_unknown_row_counts_nothing(wh: Warehouse) -> None:
    """Any value in a non-boolean soft-delete column, even 0, marks the row deleted."""
    cols: Columns = [("id", "INTEGER"), ("v", "VARCHAR"), ("gone", "BIGINT")]
    wh.replace_table("s", reader(["id", "v", "gone"], [(1, "a", None), (2, "b", None)]), cols)
    rows = [
        (1, "a", 0),
        (9, "z", 1),
        (2, "b", None),
        (3, "c", None),
        (4, "d", None),
        (5, "e", None),
    ]
    result = wh.merge(
        "s",
        reader(["id", "v", "gone"], rows),
        cols,
        primary_key=["id"],
        cursor=None,
        soft_delete="gone",
    )
    assert (result.read, result.upserted, result.deleted, result.changed) == (6, 3, 1, 4)
    assert [r[0] for r in content(wh, "s")] == [2, 3, 4, 5] and wh.row_count("s") == 4
    again = wh.merge(
        "s",
        reader(["id", "v", "gone"], rows[2:]),
        cols,
        primary_key=["id"],
        cursor=None,
        soft_delete="gone",
    )
    assert (again.upserted, again.deleted) == (0, 0)


def test_without_lake_mode_no_change_records_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    Warehouse(path, track_changes=True).close()
    wh = Warehouse(path)
    nested = Warehouse(tmp_path / "new" / "dir" / "w.duckdb")  # folders made as needed
    assert nested.path.exists()
    nested.close()
    assert wh.con.execute(
        "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = '__lake'"
    ).fetchall() == [(0,)]
    assert wh.unpublished_marker == tmp_path / "w.duckdb.unpublished"
    wh.close()


def test_lake_mode_records_what_changed_until_cleared(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb", track_changes=True)
    wh.replace_table("x", reader(NAMES, [(1, "a", 1), (2, "b", 2), (3, "c", 3)]), COLS)
    wh.replace_table("y", reader(NAMES, [(1, "a", 1)]), COLS)
    assert wh.pending_changes() == ({"x", "y"}, set())
    wh.clear_changes(["x", "y"])
    assert wh.pending_changes() == (set(), set())

    merge(wh, [(1, "a", 1), (2, "B", 2), (4, "d", 4)])  # 1 is unchanged
    assert wh.reconcile("x", keys([2, 3, 4]), [("id", "INTEGER")]) == 1  # 1 goes
    assert wh.reconcile("x", keys([2, 3, 4]), [("id", "INTEGER")]) == 0
    assert wh.pending_changes() == (set(), {"x"})
    out = tmp_path / "out" / "cycle"
    files = wh.export_changes("x", ["id"], out, full=False)
    assert sorted(pq.read_table(files["keys"]).column("id").to_pylist()) == [1, 2, 4]
    assert sorted(pq.read_table(files["rows"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 2, "v": "B", "n": 2},
        {"id": 4, "v": "d", "n": 4},
    ]
    full = wh.export_changes("x", ["id"], out, full=True)
    assert pq.read_table(full["full"]).num_rows == 3

    wh.mark_full(["x"])
    assert wh.pending_changes() == ({"x"}, set())  # whole, not by key
    wh.clear_changes(["x"])
    assert wh.pending_changes() == (set(), set())
    merge(wh, [(2, "B", 2)])  # nothing changed: nothing recorded
    assert wh.pending_changes() == (set(), set())
    wh.close()


def test_lake_mode_a_reload_of_a_table_the_lake_holds_records_only_the_keys_it_changed(
    tmp_path: Path,
) -> None:
    """A reload (full refresh, backfill, no cursor, or the restart after a kill
    that reloads a table whose watermark was never recorded) must not make the
    lake rewrite the whole table: only the keys whose rows differ are sent."""
    wh = Warehouse(tmp_path / "w.duckdb", track_changes=True)
    rows = [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    assert wh.replace_table("x", reader(NAMES, rows), COLS, primary_key=["id"]) == (3, True)
    assert wh.pending_changes() == ({"x"}, set())  # new to the lake: whole
    # Still to be sent whole (the lake may not hold it): a reload keeps it whole.
    rows[2] = (3, "C", 3)
    assert wh.replace_table("x", reader(NAMES, rows), COLS, primary_key=["id"]) == (3, True)
    assert wh.pending_changes() == ({"x"}, set())
    assert not wh.con.execute(
        "SELECT * FROM duckdb_tables() WHERE table_name = 'x' AND schema_name = '__lake'"
    ).fetchall()
    wh.clear_changes(["x"])

    merge(wh, [(5, "e", 5)])  # recorded before the reload: still sent after it
    reloaded = [(1, "a", 1), (2, "B", 2), (4, "d", 4), (5, "e", 5)]  # 2 changed, 3 back, 4 new
    assert wh.replace_table("x", reader(NAMES, reloaded), COLS, primary_key=["id"]) == (4, True)
    assert content(wh) == reloaded and wh.row_count("x") == 4
    assert wh.pending_changes() == (set(), {"x"})
    files = wh.export_changes("x", ["id"], tmp_path / "out", full=False)
    assert sorted(pq.read_table(files["keys"]).column("id").to_pylist()) == [2, 3, 4, 5]
    assert sorted(pq.read_table(files["rows"]).to_pylist(), key=lambda r: r["id"]) == [
        {"id": 2, "v": "B", "n": 2},
        {"id": 4, "v": "d", "n": 4},
        {"id": 5, "v": "e", "n": 5},
    ]
    wh.clear_changes(["x"])
    # The same rows again (in another order): nothing changed, nothing to send.
    again = list(reversed(reloaded))
    assert wh.replace_table("x", reader(NAMES, again), COLS, primary_key=["id"]) == (4, False)
    assert wh.pending_changes() == (set(), set())
    # A NULL that stays NULL is no change; one that appears is.
    nulls = [(1, None, 1), (2, "B", 2), (4, "d", 4), (5, "e", 5)]
    for expected in (True, False):
        assert wh.replace_table("x", reader(NAMES, nulls), COLS, primary_key=["id"]) == (
            4,
            expected,
        )
    assert wh.pending_changes() == (set(), {"x"})
    wh.clear_changes(["x"])

    # A composite key, and a table of key columns only.
    kc: Columns = [("a", "INTEGER"), ("b", "INTEGER"), ("v", "VARCHAR")]
    for name, cols in (("c", kc), ("k", kc[:2])):
        width = len(cols)
        first = [(1, 1, "x")[:width], (1, 2, "y")[:width]]
        wh.replace_table(name, reader(["a", "b", "v"][:width], first), cols, primary_key=["a", "b"])
        wh.clear_changes([name])
        second = [(1, 1, "x")[:width], (2, 1, "y")[:width]]
        wh.replace_table(
            name, reader(["a", "b", "v"][:width], second), cols, primary_key=["a", "b"]
        )
        assert wh.pending_changes() == (set(), {name})
        got = wh.con.execute(f'SELECT * FROM __lake."{name}" ORDER BY ALL').fetchall()
        assert got == [(1, 2), (2, 1)], name
        wh.clear_changes([name])

    # Without a primary key, or in another shape (the lake's table must be
    # replaced), the table goes whole.
    assert wh.replace_table("x", reader(NAMES, nulls), COLS)[1] is True
    assert wh.pending_changes() == ({"x"}, set())
    wh.clear_changes(["x"])
    retyped: Columns = [("id", "INTEGER"), ("v", "VARCHAR"), ("n", "INTEGER")]
    wh.replace_table("x", reader(NAMES, nulls), retyped, primary_key=["id"])
    assert wh.pending_changes() == ({"x"}, set())
    wh.clear_changes(["x"])
    wider: Columns = [*retyped, ("w", "INTEGER")]
    wh.replace_table("x", reader([*NAMES, "w"], [(1, "a", 1, 0)]), wider, primary_key=["id"])
    assert wh.pending_changes() == ({"x"}, set())
    wh.close()


def test_a_fatal_error_reopens_the_database_with_what_was_committed(
    wh: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Invalidated:
        """What DuckDB's connection does after a fatal error: refuse everything."""

        closed = False

        def execute(self, *_a: Any) -> Any:
            raise duckdb.FatalException("database has been invalidated\nOriginal error: disk full")

        def close(self) -> None:
            self.closed = True
            broken_real.close()

    broken_real = wh.con
    broken = Invalidated()
    monkeypatch.setattr(wh, "con", broken)
    wh._rows["x"] = 99  # a count from before the failure must not survive it
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        wh.ensure_usable()
    [entry] = [e for e in logs if e["event"] == "warehouse_reopening"]
    assert entry["error"] == "database has been invalidated"
    assert broken.closed and wh.con is not broken
    assert content(wh) == [(1, "a", 1), (2, "b", 2), (3, "c", 3)]
    assert wh.row_count("x") == 3
    healthy = wh.con
    wh.ensure_usable()  # a working connection is kept
    assert wh.con is healthy


def test_checkpoint_folds_the_wal_into_the_file(wh: Warehouse) -> None:
    wal = wh.path.with_name(wh.path.name + ".wal")
    merge(wh, [(4, "d", 4)])
    assert wal.exists() and wal.stat().st_size > 0
    wh.checkpoint()
    assert not wal.exists() or wal.stat().st_size == 0
