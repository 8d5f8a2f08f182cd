"""Reading the source database as a stream of Arrow record batches.

Rows go from the driver straight into Arrow (ConnectorX, written in Rust),
never through pandas or Python objects. The same code serves SQL Server in
production and PostgreSQL/SQLite in tests and the demo: what differs lives in
the source's dialect (etl_service.source.dialects). SQLAlchemy is used for
what it is good at: parsing URLs, reflecting tables, and holding the read
transaction and the source clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import connectorx as cx
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from analytics_shared.logging_config import get_logger
from etl_service.errors import SourceError, source_failure
from etl_service.source.dialects import MssqlTls, dialect_for, sql_literal
from etl_service.source.records import ColumnInfo, SourceRead, TableShape
from etl_service.source.type_mapping import duckdb_type, is_rowversion, is_timestamp

__all__ = ["Source", "connectorx_url"]

log = get_logger(__name__)


def connectorx_url(url: str | URL, tls: MssqlTls | None = None) -> str:
    """Translate a SQLAlchemy URL into the form ConnectorX expects."""
    u = make_url(url) if isinstance(url, str) else url
    return dialect_for(u).extractor_url(u, tls)


def _quote(dialect: sa.Dialect, name: str) -> str:
    return ".".join(dialect.identifier_preparer.quote(part) for part in name.split("."))


class Source:
    def __init__(self, url: str, *, timezone: str = "UTC", tls: MssqlTls | None = None) -> None:
        self.url = make_url(url)
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        self.dialect = dialect_for(self.url)
        self.timezone = timezone
        self._cx_url = self.dialect.extractor_url(self.url, tls)
        self.dialect.check_timezone(timezone)

    def close(self) -> None:
        self.engine.dispose()

    def quote(self, name: str) -> str:
        return _quote(self.engine.dialect, name)

    # -- reflection ---------------------------------------------------------

    def shape(self, table: str) -> TableShape:
        schema, _, name = table.rpartition(".")
        try:
            inspector = sa.inspect(self.engine)
            columns = inspector.get_columns(name, schema=schema or None)
            pk = inspector.get_pk_constraint(name, schema=schema or None)
        except sa.exc.NoSuchTableError:
            raise SourceError(f"table {table!r} does not exist in the source") from None
        except sa.exc.DBAPIError as exc:
            raise source_failure(f"cannot reflect {table!r}", exc) from exc
        if not columns:
            raise SourceError(f"table {table!r} does not exist in the source")
        infos = []
        for c in columns:
            ts, tz = is_timestamp(c["type"])
            extract = self.dialect.text_extract(c["type"])
            infos.append(
                ColumnInfo(
                    c["name"], duckdb_type(c["type"]), ts, tz, extract, is_rowversion(c["type"])
                )
            )
        return TableShape(tuple(infos), tuple(pk.get("constrained_columns") or ()))

    def column_signature(self, table: str) -> tuple[tuple[object, ...], ...]:
        """Names and types of the table's columns, as cheaply as the driver allows:
        equal signatures mean no column was added, dropped, renamed or retyped."""
        if not self.dialect.describes_column_types:
            return tuple((c.name, c.duckdb_type) for c in self.shape(table).columns)
        try:
            with self.engine.connect() as conn:
                result = conn.execute(sa.text(f"SELECT * FROM {self.quote(table)} WHERE 1 = 0"))
                description = result.cursor.description if result.cursor else ()
                result.close()
        except sa.exc.DBAPIError as exc:
            raise source_failure(f"cannot read the columns of {table!r}", exc) from exc
        return tuple(tuple(d[:2]) + tuple(d[3:6]) for d in description or ())

    def estimate_rows(self, table: str) -> int | None:
        """The source's estimate of the table's rows (for progress); None when it has none."""
        quoted = self.quote(table)
        sql = sa.text(self.dialect.row_estimate_sql(quoted))
        if ":name" in sql.text:
            sql = sql.bindparams(name=quoted)
        try:
            with self.engine.connect() as conn:
                value = conn.execute(sql).scalar()
        except sa.exc.DBAPIError as exc:  # progress only: the load goes on without it
            log.warning("row_estimate_failed", table=table, error=str(exc).splitlines()[0])
            return None
        return int(value) if value is not None and int(value) >= 0 else None

    def columns(self, table: str) -> list[tuple[str, str | None]]:
        """(name, DuckDB type or None to keep the extractor's) for each column."""
        return [(c.name, c.duckdb_type) for c in self.shape(table).columns]

    # -- the read transaction and the clock ------------------------------------

    def begin_read(self, settle_seconds: float) -> SourceRead:
        """Start the cycle's read transaction and read the source clock in it.

        PostgreSQL: a REPEATABLE READ transaction whose snapshot every
        ConnectorX query imports. SQL Server: see docs/architecture.md (SNAPSHOT).
        """
        clock = self.dialect.clock_sql(settle_seconds, self.timezone)
        try:
            return self.dialect.begin_read(self.engine, clock, self._cx_url, self.url)
        except sa.exc.DBAPIError as exc:
            raise source_failure("cannot open the source snapshot", exc) from exc

    # -- queries ---------------------------------------------------------------

    def lower_bound_sql(
        self,
        watermark: str,
        column: ColumnInfo,
        lookback_seconds: float,
        lookback_values: int = 0,
    ) -> str:
        """SQL for `watermark - lookback`, computed by the source at its precision.

        Date/time cursors go back `lookback_seconds`; integer cursors (and
        rowversions) `lookback_values` values.
        """
        if not column.is_timestamp:
            if not re.fullmatch(r"-?\d+(\.\d+)?", watermark):
                raise SourceError(f"watermark {watermark!r} of {column.name!r} is not a number")
            lower = Decimal(watermark) - lookback_values
            if column.is_rowversion:
                return self.dialect.rowversion_sql(int(lower))
            return str(lower)
        return self.dialect.lower_bound_sql(sql_literal(watermark), column, lookback_seconds)

    def select_sql(
        self, table: str, columns: Sequence[str | ColumnInfo] | None, where: str = ""
    ) -> str:
        """SELECT of `columns` (all with `*`); DECIMAL columns come as exact text."""
        cols = ", ".join(self._projection(c) for c in columns) if columns else "*"
        return f"SELECT {cols} FROM {self.quote(table)}" + (f" WHERE {where}" if where else "")

    def _projection(self, column: str | ColumnInfo) -> str:
        if isinstance(column, str):
            return self.quote(column)
        quoted = self.quote(column.name)
        return f"{column.extract.format(quoted)} AS {quoted}" if column.extract else quoted

    def read(
        self, sql: str, batch_size: int, source_read: SourceRead | None = None
    ) -> pa.RecordBatchReader:
        """Stream the result of `sql` as Arrow record batches of about `batch_size` rows,
        inside the cycle's read transaction when one is given."""
        kwargs: dict[str, Any] = {}
        url = self._cx_url
        if source_read is not None:
            if source_read.pre_execution:
                kwargs["pre_execution_query"] = source_read.pre_execution
            url = source_read.extractor_url or url
        try:
            return cx.read_sql(
                url, sql, return_type="arrow_stream", batch_size=batch_size, **kwargs
            )
        except Exception as exc:  # ConnectorX raises plain RuntimeError/ValueError
            raise source_failure("source query failed", exc) from exc

    def read_table(
        self, table: str, columns: Sequence[str | ColumnInfo] | None, batch_size: int
    ) -> pa.RecordBatchReader:
        return self.read(self.select_sql(table, columns), batch_size)
