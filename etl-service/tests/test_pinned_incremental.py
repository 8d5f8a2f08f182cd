"""Pinned behaviours of incremental.py (TableSyncer), one table at a time.

A real PostgreSQL source and a real working DuckDB, without the cycle around
them (state store, publishing): the cycle's read is built by hand, so the
source clock (the next watermark) is a value the test chooses. These are the
fast tests `make mutation MODULES=incremental` runs first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from etl_service.errors import SchemaContractError
from etl_service.incremental import TableOutcome, TableSyncer, _later
from etl_service.source import Source, SourceRead
from etl_service.source.records import ColumnInfo, TableShape
from etl_service.tables import TableSpec
from etl_service.warehouse import Warehouse
from testsupport.postgres import temporary_database

T0 = "2026-01-01 00:00:00"
T5 = "2026-01-01 00:00:05"
CLOCK = SourceRead(now_naive="2026-02-01 00:00:00", now_aware="2026-02-01 00:00:00+00:00")


class Rig:
    """A source table `t`, a working DuckDB and a syncer between them."""

    def __init__(self, pg_url: str, tmp_path: Path) -> None:
        self.engine = sa.create_engine(pg_url)
        self.source = Source(pg_url)
        self.warehouse = Warehouse(tmp_path / "w.duckdb")
        self.syncer = TableSyncer(
            self.source, self.warehouse, batch_size=100, lookback_seconds=0, progress=False
        )

    def sql(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))

    def sync(self, spec: TableSpec | None = None, watermark: str | None = T0, **kw: Any):
        return self.syncer.sync(spec or TableSpec("t"), kw.pop("read", CLOCK), watermark, **kw)

    def rows(self, table: str = "t") -> list[tuple[Any, ...]]:
        return self.warehouse.con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()

    def close(self) -> None:
        self.warehouse.close()
        self.source.close()
        self.engine.dispose()


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """One database for the module (creating one per test costs more than the test)."""
    with temporary_database() as url:
        yield url


@pytest.fixture
def rig(pg_module_url: str, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(pg_module_url, tmp_path)
    r.sql(
        "DROP SCHEMA public CASCADE",
        "CREATE SCHEMA public",
        "CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamp NOT NULL)",
        f"INSERT INTO t VALUES (1, 'a', '{T0}'), (2, 'b', '{T0}'), (3, 'c', '{T0}')",
    )
    yield r
    r.close()


def loaded(rig: Rig, spec: TableSpec | None = None) -> TableOutcome:
    first = rig.sync(spec, watermark=None)
    assert first.reason == "first run"
    return first


def test_a_first_run_is_a_full_load_with_the_source_clock_as_watermark(rig: Rig) -> None:
    first = rig.sync(watermark=None)
    assert first == TableOutcome(
        table="t",
        mode="full",
        rows_read=3,
        changed=3,
        row_count=3,
        watermark=CLOCK.now_naive,
        reconciled=True,
        full_load=True,
        reason="first run",
    )
    assert first.summary() == {
        "mode": "full",
        "read": 3,
        "changed": 3,
        "rows": 3,
        "reason": "first run",
    }
    assert rig.rows() == [(1, "a", sa_ts(T0)), (2, "b", sa_ts(T0)), (3, "c", sa_ts(T0))]


def sa_ts(text: str) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text)


def test_the_lower_bound_is_inclusive_and_only_the_delta_is_read(rig: Rig) -> None:
    loaded(rig)
    rig.sql(
        f"UPDATE t SET v = 'tie', updated_at = '{T5}' WHERE id = 1",  # exactly at the bound
        "UPDATE t SET v = 'early', updated_at = '2026-01-01 00:00:04.999999' WHERE id = 2",
        f"INSERT INTO t VALUES (4, 'd', '{T5}')",
    )
    outcome = rig.sync(watermark=T5)
    assert outcome == TableOutcome(
        table="t",
        mode="incremental",
        rows_read=2,  # ids 1 and 4; id 2 is below the bound
        changed=2,
        row_count=4,
        watermark=CLOCK.now_naive,
        reconciled=False,
        full_load=False,
    )
    assert outcome.summary() == {"mode": "incremental", "read": 2, "changed": 2, "rows": 4}
    assert [r[1] for r in rig.rows()] == ["tie", "b", "c", "d"]


def test_the_lookback_widens_the_bound(rig: Rig) -> None:
    loaded(rig)
    rig.sql(f"UPDATE t SET v = 'late', updated_at = '{T5}' WHERE id = 2")
    rig.syncer.lookback_seconds = 3
    assert rig.sync(watermark="2026-01-01 00:00:08").rows_read == 1
    rig.syncer.lookback_seconds = 2.9
    assert rig.sync(watermark="2026-01-01 00:00:08").rows_read == 0


def test_the_watermark_never_moves_back(rig: Rig) -> None:
    loaded(rig)
    ahead = "2026-03-01 00:00:00"  # later than the cycle's clock
    assert rig.sync(watermark=ahead).watermark == ahead


@pytest.mark.parametrize(
    ("old", "new", "later"),
    [
        ("999", "1000", "1000"),  # numbers as numbers, not as text
        ("1000", "999", "1000"),
        ("-1.5", "-2", "-1.5"),
        ("2026-01-02 00:00:00", "2026-01-01 23:59:59.9999999", "2026-01-02 00:00:00"),
        ("10", "9x", "9x"),  # not both numbers: text order
        (None, "5", "5"),
        ("5", None, "5"),
        (None, None, None),
    ],
)
def test_later_of_two_watermarks(old: str | None, new: str | None, later: str | None) -> None:
    assert _later(old, new) == later


def test_full_refresh_and_missing_working_table_reload_everything(rig: Rig) -> None:
    loaded(rig)
    again = rig.sync(full_refresh=True)
    # An incremental table's full load does not compare contents: all rows count.
    assert (again.reason, again.mode, again.changed, again.rows_read) == ("requested", "full", 3, 3)
    rig.warehouse.con.execute("DROP TABLE t")
    rig.warehouse._rows.clear()
    lost = rig.sync()
    assert (lost.reason, lost.mode, lost.row_count) == ("working table missing", "full", 3)


def test_a_table_without_cursor_is_reloaded_and_compared_each_cycle(rig: Rig) -> None:
    rig.sql(
        "CREATE TABLE rates (code text PRIMARY KEY, rate int)",
        "INSERT INTO rates VALUES ('EUR', 1)",
    )
    spec = TableSpec("rates", cursor_column=None)
    first = rig.sync(spec, watermark=None)
    assert (first.reason, first.changed, first.watermark) == ("no cursor column", 1, None)
    same = rig.sync(spec, watermark=None)
    assert (same.mode, same.changed, same.reconciled, same.full_load) == ("full", 0, True, True)
    rig.sql("UPDATE rates SET rate = 2")
    assert rig.sync(spec, watermark=None).changed == 1
    assert rig.rows("rates") == [("EUR", 2)]


def test_an_integer_cursor_takes_the_largest_value_held(rig: Rig) -> None:
    rig.sql(
        "CREATE TABLE ev (id int PRIMARY KEY, seq bigint NOT NULL)",
        "INSERT INTO ev VALUES (1, 998), (2, 999)",
    )
    spec = TableSpec("ev", cursor_column="seq")
    assert rig.sync(spec, watermark=None).watermark == "999"
    rig.sql("INSERT INTO ev VALUES (3, 1000)")
    outcome = rig.sync(spec, watermark="999")
    assert (outcome.rows_read, outcome.watermark) == (2, "1000")  # 999 is re-read: inclusive


def test_an_aware_cursor_takes_the_aware_clock(rig: Rig) -> None:
    rig.sql(
        "CREATE TABLE tz (id int PRIMARY KEY, updated_at timestamptz NOT NULL)",
        "INSERT INTO tz VALUES (1, now())",
    )
    assert rig.sync(TableSpec("tz"), watermark=None).watermark == CLOCK.now_aware


def test_a_rowversion_cursor_takes_the_minimum_active_rowversion(rig: Rig) -> None:
    """SQL Server only (so the shape is built by hand): the rows below
    MIN_ACTIVE_ROWVERSION() are committed, the largest one held may not be."""
    loaded(rig)
    spec = TableSpec("t", primary_key=("id",), cursor_column="id")
    shape = TableShape((ColumnInfo("id", "BIGINT", False, False, is_rowversion=True),), ("id",))
    read = SourceRead(CLOCK.now_naive, CLOCK.now_aware, active_rowversion="7")
    assert rig.syncer._watermark(spec, shape, read) == "7"
    # Without one (an older server), the largest value held.
    assert rig.syncer._watermark(spec, shape, CLOCK) == "3"


def test_reconciliation_deletes_what_the_source_lost_and_counts_it(rig: Rig) -> None:
    loaded(rig)
    rig.sql("DELETE FROM t WHERE id = 3", f"UPDATE t SET v = 'x', updated_at = '{T5}' WHERE id = 1")
    plain = rig.sync(watermark=T5)
    assert (plain.changed, plain.row_count, plain.reconciled) == (1, 3, False)
    rig.sql("DELETE FROM t WHERE id = 2")
    done = rig.sync(watermark=T5, reconcile=True)
    assert (done.rows_read, done.changed, done.row_count, done.reconciled) == (1, 2, 1, True)
    assert rig.rows() == [(1, "x", sa_ts(T5))]


def test_soft_deleted_rows_leave_on_load_and_on_merge(rig: Rig) -> None:
    rig.sql(
        "CREATE TABLE acc (id int PRIMARY KEY, gone boolean, updated_at timestamp NOT NULL)",
        f"INSERT INTO acc VALUES (1, false, '{T0}'), (2, true, '{T0}'), (3, NULL, '{T0}')",
    )
    spec = TableSpec("acc", soft_delete_column="gone")
    assert rig.sync(spec, watermark=None).row_count == 2
    rig.sql(f"UPDATE acc SET gone = true, updated_at = '{T5}' WHERE id = 1")
    outcome = rig.sync(spec, watermark=T5)
    assert (outcome.changed, outcome.row_count) == (1, 1)
    assert [r[0] for r in rig.rows("acc")] == [3]


def test_duplicate_keys_of_a_configured_key_collapse_to_the_latest_cursor(rig: Rig) -> None:
    """A TABLE_CONFIG key need not be unique in the source: the latest row wins."""
    rig.sql(
        "CREATE TABLE px (id int PRIMARY KEY, code text, updated_at timestamp NOT NULL)",
        f"INSERT INTO px VALUES (1, 'k', '{T0}')",
    )
    spec = TableSpec("px", primary_key=("code",))
    loaded(rig, spec)
    rig.sql(
        "INSERT INTO px VALUES (3, 'k', '2026-01-01 00:00:09'), (2, 'k', '2026-01-01 00:00:07')"
    )
    outcome = rig.sync(spec, watermark=T5)
    assert (outcome.rows_read, outcome.row_count) == (1, 1)
    assert rig.rows("px") == [(3, "k", sa_ts("2026-01-01 00:00:09"))]


def test_a_new_source_column_reloads_the_table_under_evolve(rig: Rig) -> None:
    loaded(rig)
    rig.sync(watermark=T0)  # the reflected shape is cached now
    rig.sql("ALTER TABLE t ADD COLUMN w int DEFAULT 7")
    outcome = rig.sync(watermark=T0)
    assert (outcome.mode, outcome.reason, outcome.row_count) == ("full", "columns changed", 3)
    assert outcome.schema_change is not None and outcome.schema_change.action == "evolved"
    assert outcome.summary() == {
        "mode": "full",
        "read": 3,
        "changed": 3,
        "rows": 3,
        "reason": "columns changed",
        "schema_change": "evolved: added w INTEGER",
    }
    assert [r[3] for r in rig.rows()] == [7, 7, 7]
    assert rig.sync(watermark=T0).schema_change is None  # once


def test_discard_new_columns_keeps_merging_the_held_shape(rig: Rig) -> None:
    spec = TableSpec("t", schema_contract="discard_new_columns")
    loaded(rig, spec)
    rig.sql(
        "ALTER TABLE t ADD COLUMN w int DEFAULT 7", f"UPDATE t SET updated_at = '{T5}' WHERE id = 2"
    )
    outcome = rig.sync(spec, watermark=T5)
    assert (outcome.mode, outcome.rows_read) == ("incremental", 1)
    assert outcome.schema_change is not None and outcome.schema_change.action == "discarded"
    assert [n for n, _ in rig.warehouse.columns("t")] == ["id", "v", "updated_at"]


def test_freeze_refuses_a_changed_source(rig: Rig) -> None:
    spec = TableSpec("t", schema_contract="freeze")
    loaded(rig, spec)
    rig.sql("ALTER TABLE t ADD COLUMN w int")
    with pytest.raises(SchemaContractError, match="added w"):
        rig.sync(spec, watermark=T0)


def test_a_newly_excluded_column_leaves_the_working_table(rig: Rig) -> None:
    loaded(rig)
    spec = TableSpec("t", exclude_columns=("v",))
    outcome = rig.sync(spec, watermark=T0)
    assert (outcome.mode, outcome.reason) == ("full", "column list changed")
    assert [n for n, _ in rig.warehouse.columns("t")] == ["id", "updated_at"]
    assert rig.sync(spec, watermark=T0).mode == "incremental"


def test_progress_reaches_the_sink_during_a_full_load(rig: Rig) -> None:
    seen: list[str] = []
    rig.syncer.progress_sink = seen.append
    rig.syncer.progress_interval = 0  # every batch
    loaded(rig)
    assert seen and seen[-1].startswith("full load t: 3")


def test_the_bar_follows_the_terminal_unless_told(rig: Rig, monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert TableSyncer(rig.source, rig.warehouse, batch_size=1, lookback_seconds=0).progress
    told: Callable[..., TableSyncer] = TableSyncer
    assert not told(
        rig.source, rig.warehouse, batch_size=1, lookback_seconds=0, progress=False
    ).progress


def test_reconciled_deletes_add_to_the_merged_changes(rig: Rig) -> None:
    rig.sql(f"INSERT INTO t VALUES (4, 'd', '{T0}'), (5, 'e', '{T0}')")
    loaded(rig)
    rig.sql(
        f"UPDATE t SET v = 'x', updated_at = '{T5}' WHERE id = 1",
        "DELETE FROM t WHERE id IN (3, 4, 5)",
    )
    outcome = rig.sync(watermark=T5, reconcile=True)
    assert (outcome.rows_read, outcome.changed, outcome.row_count) == (1, 4, 2)  # 1 + 3


def test_a_full_load_logs_its_reason_and_duration(rig: Rig, monkeypatch) -> None:
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    import etl_service.incremental

    ticks = iter([0.1, 0.3564])  # start and end of the load (end % start would differ)
    monkeypatch.setattr(
        etl_service.incremental, "time", SimpleNamespace(monotonic=lambda: next(ticks))
    )
    with capture_logs() as logs:
        loaded(rig)
    [entry] = [e for e in logs if e["event"] == "table_full_load"]
    assert (entry["table"], entry["rows"], entry["reason"]) == ("t", 3, "first run")
    assert entry["duration_s"] == 0.256
