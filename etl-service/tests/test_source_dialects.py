"""One dialect per source database: the SQL each one writes (no database needed)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import make_url

from analytics_shared.errors import TransientError
from etl_service.errors import SourceError, SourceUnavailable, describe, source_failure
from etl_service.retry import is_transient
from etl_service.source import ColumnInfo, dialect_for
from etl_service.source.dialects import MssqlDialect, PostgresDialect, SqliteDialect

NAIVE = ColumnInfo("updated_at", "TIMESTAMP", True, False)
AWARE = ColumnInfo("updated_at", "TIMESTAMPTZ", True, True)


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("postgresql+psycopg://u@h/db", PostgresDialect),
        ("mssql+pymssql://u:p@h:1433/db", MssqlDialect),
        ("sqlite:////tmp/source.db", SqliteDialect),
    ],
)
def test_the_dialect_is_chosen_by_the_url(url: str, dialect: type) -> None:
    assert isinstance(dialect_for(make_url(url)), dialect)


def test_an_unsupported_database_is_refused() -> None:
    with pytest.raises(SourceError, match="unsupported source database 'mysql'"):
        dialect_for(make_url("mysql://u@h/db"))


def test_lower_bounds_keep_each_source_precision() -> None:
    lit = "'2026-01-01 00:00:00.1234567'"
    assert PostgresDialect().lower_bound_sql(lit, AWARE, 5) == (
        f"(CAST({lit} AS timestamptz) - make_interval(secs => 5.000000))"
    )
    assert MssqlDialect().lower_bound_sql(lit, NAIVE, 1.5) == (
        f"DATEADD(millisecond, -1500, CAST({lit} AS datetime2(7)))"
    )
    assert SqliteDialect().lower_bound_sql(lit, NAIVE, 2) == (
        f"strftime('%Y-%m-%d %H:%M:%f', {lit}, '-2.000000 seconds')"
    )


def test_only_exact_decimals_come_as_text() -> None:
    assert PostgresDialect().text_extract(sa.Numeric(12, 2)) == "CAST({} AS text)"
    assert MssqlDialect().text_extract(mssql.MONEY()) == "CONVERT(varchar(32), {}, 2)"
    assert MssqlDialect().text_extract(sa.Numeric(12, 2)) == "CAST({} AS varchar(48))"
    assert SqliteDialect().text_extract(sa.Numeric(12, 2)) == "CAST({} AS TEXT)"
    for dialect in (PostgresDialect(), MssqlDialect(), SqliteDialect()):
        assert dialect.text_extract(sa.Integer()) is None
        assert dialect.text_extract(sa.Numeric()) is None  # unbounded: the extractor's


def test_sqlite_sources_are_utc_and_on_disk() -> None:
    SqliteDialect().check_timezone("utc")
    with pytest.raises(SourceError, match="SOURCE_TIMEZONE=UTC"):
        SqliteDialect().check_timezone("Europe/Paris")
    with pytest.raises(SourceError, match="in-memory SQLite"):
        SqliteDialect().extractor_url(make_url("sqlite://"), None)


def test_failures_are_classified_once_by_type_and_read_as_before() -> None:
    dropped = source_failure("source query failed", RuntimeError("Connection reset by peer"))
    missing = source_failure("source query failed", RuntimeError('relation "x" does not exist'))
    assert isinstance(dropped, SourceUnavailable) and isinstance(dropped, TransientError)
    assert type(missing) is SourceError
    assert is_transient(dropped) and not is_transient(missing)
    assert describe(dropped) == "SourceError: source query failed: Connection reset by peer"


def test_rowversion_cursors_are_integers_bounded_by_the_oldest_open_transaction(tmp_path) -> None:
    from etl_service.incremental import TableSyncer
    from etl_service.source import SourceRead, TableShape
    from etl_service.source.dialects import _ClockOnlyRead
    from etl_service.source.type_mapping import duckdb_type, is_rowversion
    from etl_service.tables import TableSpec
    from etl_service.warehouse import Warehouse

    assert is_rowversion(mssql.ROWVERSION()) and is_rowversion(mssql.TIMESTAMP())
    assert duckdb_type(mssql.ROWVERSION()) == "BIGINT"
    assert MssqlDialect().text_extract(mssql.ROWVERSION()) == "CAST({} AS bigint)"
    assert MssqlDialect().rowversion_sql(81234) == "CAST(CAST(81234 AS bigint) AS binary(8))"
    with pytest.raises(SourceError, match="only on SQL Server"):
        PostgresDialect().rowversion_sql(1)
    assert "CAST(MIN_ACTIVE_ROWVERSION() AS bigint)" in MssqlDialect().clock_sql(5, "UTC")

    # The clock's third column becomes the read's active rowversion...
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'clock.db'}")
    read = _ClockOnlyRead().begin_read(engine, "SELECT 'n', 'a', 81234", "", engine.url)
    assert read.active_rowversion == "81234"
    engine.dispose()
    # ...and a rowversion cursor's next watermark, whatever larger values were read.
    warehouse = Warehouse(tmp_path / "w.duckdb")
    warehouse.con.execute("CREATE TABLE t AS SELECT 99999 AS row_ver")
    syncer = TableSyncer(None, warehouse, batch_size=10, lookback_seconds=0)  # type: ignore[arg-type]
    rowversion = ColumnInfo("row_ver", "BIGINT", False, False, "CAST({} AS bigint)", True)
    shape = TableShape((rowversion,), ())
    spec = TableSpec("t", cursor_column="row_ver")
    assert (
        syncer._watermark(spec, shape, SourceRead("n", "a", active_rowversion="81234")) == "81234"
    )
    plain = TableShape((ColumnInfo("row_ver", "BIGINT", False, False),), ())
    assert syncer._watermark(spec, plain, SourceRead("n", "a")) == "99999"  # max seen
    warehouse.close()


def test_integer_cursor_lookback_and_watermarks_compare_as_numbers() -> None:
    from etl_service.incremental import _later
    from etl_service.source import Source

    source = Source("mssql+pymssql://u:p@h:1433/db")
    count = ColumnInfo("seq", "BIGINT", False, False)
    assert source.lower_bound_sql("1000", count, 60, 250) == "750"
    assert source.lower_bound_sql("1000", count, 60) == "1000"
    source.close()
    assert _later("999", "1000") == "1000"  # not text order
    assert _later("2026-01-02 00:00:00", "2026-01-01 23:59:59") == "2026-01-02 00:00:00"
