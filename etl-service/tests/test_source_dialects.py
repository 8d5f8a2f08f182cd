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
