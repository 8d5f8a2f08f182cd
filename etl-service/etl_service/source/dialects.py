"""One class per source database, behind one protocol (like dlt's table loaders).

A dialect knows what differs between databases: the ConnectorX URL, the
source clock, the lower bound of a delta, which columns come as exact text,
and the read transaction that keeps all tables of a cycle consistent.
`dialect_for(url)` picks one, once; adding a database means adding a class
here and a line in `DIALECTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import URL, make_url

from etl_service.errors import SourceError
from etl_service.source.records import ColumnInfo, SourceRead
from etl_service.source.type_mapping import exact_decimal, is_rowversion

__all__ = [
    "DIALECTS",
    "Dialect",
    "MssqlDialect",
    "MssqlTls",
    "PostgresDialect",
    "SqliteDialect",
    "dialect_for",
    "sql_literal",
]


@dataclass(frozen=True)
class MssqlTls:
    """How ConnectorX checks SQL Server's certificate. Whether TLS is required
    comes from the URL (pymssql's `encryption=require`), so both drivers agree."""

    trust_server_certificate: bool = False
    ca_file: Path | None = None


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Dialect(Protocol):
    """What the reading code asks of a source database."""

    name: ClassVar[str]  # SQLAlchemy's backend name
    # True when the driver's cursor.description tells column types apart
    # precisely (psycopg: type OID, precision, scale), so a `WHERE 1 = 0`
    # query is enough to notice a retyped column; otherwise reflect.
    describes_column_types: ClassVar[bool]

    def check_timezone(self, timezone: str) -> None:
        """Refuse a SOURCE_TIMEZONE the database cannot honour."""
        ...

    def extractor_url(self, url: URL, tls: MssqlTls | None) -> str:
        """The ConnectorX URL for this SQLAlchemy URL."""
        ...

    def clock_sql(self, settle_seconds: float, timezone: str) -> str:
        """SELECT of (naive now, aware now[, snapshot id]) minus the settle lag."""
        ...

    def lower_bound_sql(self, literal: str, column: ColumnInfo, lookback_seconds: float) -> str:
        """SQL for `watermark - lookback` on a date/time cursor, at the source's precision."""
        ...

    def text_extract(self, source_type: sa.types.TypeEngine) -> str | None:
        """SQL sending a column in the form the load casts from (`{}` is the quoted
        column): exact text for DECIMAL(p,s), an integer for rowversion; or None."""
        ...

    def rowversion_sql(self, value: int) -> str:
        """A rowversion literal for `value` (SQL Server only)."""
        ...

    def begin_read(
        self, engine: sa.Engine, clock_sql: str, extractor_url: str, url: URL
    ) -> SourceRead:
        """Start the cycle's read transaction and read the source clock in it."""
        ...

    def row_estimate_sql(self, quoted_table: str) -> str:
        """SELECT of the table's estimated row count (`:name` is the quoted name),
        from the statistics where the database keeps them: cheap on any size."""
        ...


class _ClockOnlyRead:
    """A read without a shared transaction: the clock, on a short connection."""

    def begin_read(
        self, engine: sa.Engine, clock_sql: str, extractor_url: str, url: URL
    ) -> SourceRead:
        with engine.connect() as conn:
            row = conn.execute(sa.text(clock_sql)).one()
        # A third column, where the dialect reads one: MIN_ACTIVE_ROWVERSION().
        active = str(row[2]) if len(row) > 2 and row[2] is not None else None
        return SourceRead(str(row[0]), str(row[1]), active_rowversion=active)


class _NoRowversion:
    def rowversion_sql(self, value: int) -> str:
        raise SourceError("rowversion cursors exist only on SQL Server")


class _AnyTimezone:
    def check_timezone(self, timezone: str) -> None:
        return None


class PostgresDialect(_NoRowversion, _AnyTimezone):
    describes_column_types: ClassVar[bool] = True
    name: ClassVar[str] = "postgresql"

    def extractor_url(self, url: URL, tls: MssqlTls | None) -> str:
        return url.set(drivername="postgresql").render_as_string(hide_password=False)

    def clock_sql(self, settle_seconds: float, timezone: str) -> str:
        s = f"{float(settle_seconds):.6f}"
        # CURRENT_TIMESTAMP is the transaction's start: never after the snapshot.
        lagged = f"(CURRENT_TIMESTAMP - make_interval(secs => {s}))"
        return (
            f"SELECT CAST({lagged} AT TIME ZONE {sql_literal(timezone)} AS text),"
            f" to_char({lagged} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00',"
            " pg_export_snapshot()"
        )

    def row_estimate_sql(self, quoted_table: str) -> str:
        # -1 (PostgreSQL 14+) until the table was first vacuumed or analysed.
        return "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(:name)"

    def lower_bound_sql(self, literal: str, column: ColumnInfo, lookback_seconds: float) -> str:
        cast = "timestamptz" if column.has_timezone else "timestamp"
        return f"(CAST({literal} AS {cast}) - make_interval(secs => {float(lookback_seconds):.6f}))"

    def text_extract(self, source_type: sa.types.TypeEngine) -> str | None:
        return "CAST({} AS text)" if exact_decimal(source_type) else None

    def begin_read(
        self, engine: sa.Engine, clock_sql: str, extractor_url: str, url: URL
    ) -> SourceRead:
        """A REPEATABLE READ transaction exports its snapshot and every ConnectorX
        query imports it, so all tables of the cycle see the same committed state."""
        conn = engine.connect().execution_options(isolation_level="REPEATABLE READ")
        try:
            conn.begin()
            # One round trip: the clock and the snapshot, in one statement.
            naive, aware, snap_id = conn.execute(sa.text(clock_sql)).one()
            cycle_url = _plain_extractor_url(conn, url, extractor_url)
        except BaseException:
            conn.close()
            raise
        pre = [
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            f"SET TRANSACTION SNAPSHOT {sql_literal(str(snap_id))}",
        ]
        return SourceRead(str(naive), str(aware), pre, str(snap_id), cycle_url, _conn=conn)


def _plain_extractor_url(conn: sa.Connection, url: URL, extractor_url: str) -> str | None:
    """ConnectorX's URL for this cycle: TLS exactly when libpq negotiated it.

    Without `sslmode` in the URL (libpq's default `prefer`), ConnectorX sets
    up a TLS connector for every query even when the server has TLS off,
    which costs more than the rest of a small delta read (~8 ms of ~12 ms).
    When the read connection, opened by libpq with the same URL, is not
    encrypted, the extractor is told `sslmode=disable`: the same outcome
    `prefer` reaches, without the attempt. An explicit `require`/`verify-*`
    is never touched.
    """
    if str(url.query.get("sslmode", "prefer")) not in ("prefer", "allow", "disable"):
        return None
    dbapi = conn.connection.dbapi_connection
    pgconn = getattr(dbapi, "pgconn", None)  # psycopg 3
    in_use = getattr(pgconn, "ssl_in_use", None)
    if in_use is None:  # psycopg2
        in_use = getattr(getattr(dbapi, "info", None), "ssl_in_use", None)
    if in_use is not False:
        return None
    plain = make_url(extractor_url).update_query_dict({"sslmode": "disable"})
    return plain.render_as_string(hide_password=False)


class MssqlDialect(_ClockOnlyRead, _AnyTimezone):
    """SQL Server: see docs/architecture.md (SNAPSHOT isolation)."""

    describes_column_types: ClassVar[bool] = False

    name: ClassVar[str] = "mssql"

    def extractor_url(self, url: URL, tls: MssqlTls | None) -> str:
        tls = tls or MssqlTls()
        query: dict[str, str] = {}
        if str(url.query.get("encryption", "")).lower() == "require":
            query["encrypt"] = "true"
        if tls.trust_server_certificate:
            query["trust_server_certificate"] = "true"
        elif tls.ca_file is not None:
            query["trust_server_certificate_ca"] = str(tls.ca_file)
        return url.set(drivername="mssql", query=query).render_as_string(hide_password=False)

    def clock_sql(self, settle_seconds: float, timezone: str) -> str:
        ms = int(settle_seconds * 1000)
        lagged = f"DATEADD(millisecond, -{ms}, SYSDATETIMEOFFSET())"
        # MIN_ACTIVE_ROWVERSION(): the lowest rowversion of a still-open
        # transaction (or the next one); every rowversion below it is committed.
        return (
            "SELECT CONVERT(varchar(27),"
            f" CAST({lagged} AT TIME ZONE {sql_literal(timezone)} AS datetime2(7)), 121),"
            f" CONVERT(varchar(34), SWITCHOFFSET({lagged}, '+00:00'), 121),"
            " CAST(MIN_ACTIVE_ROWVERSION() AS bigint)"
        )

    def row_estimate_sql(self, quoted_table: str) -> str:
        # The heap (0) or clustered index (1): one count per row, kept current.
        return (
            "SELECT SUM(row_count) FROM sys.dm_db_partition_stats"
            " WHERE object_id = OBJECT_ID(:name) AND index_id IN (0, 1)"
        )

    def lower_bound_sql(self, literal: str, column: ColumnInfo, lookback_seconds: float) -> str:
        cast = "datetimeoffset(7)" if column.has_timezone else "datetime2(7)"
        ms = int(lookback_seconds * 1000)
        return f"DATEADD(millisecond, -{ms}, CAST({literal} AS {cast}))"

    def text_extract(self, source_type: sa.types.TypeEngine) -> str | None:
        if is_rowversion(source_type):
            return "CAST({} AS bigint)"
        if not exact_decimal(source_type):
            return None
        if isinstance(source_type, mssql.MONEY | mssql.SMALLMONEY):
            return "CONVERT(varchar(32), {}, 2)"  # style 2: all four decimals
        return "CAST({} AS varchar(48))"

    def rowversion_sql(self, value: int) -> str:
        # Compared as binary(8), so an index on the rowversion column is used.
        return f"CAST(CAST({int(value)} AS bigint) AS binary(8))"


class SqliteDialect(_NoRowversion, _ClockOnlyRead):
    describes_column_types: ClassVar[bool] = False
    name: ClassVar[str] = "sqlite"

    def check_timezone(self, timezone: str) -> None:
        if timezone.upper() != "UTC":
            raise SourceError("a SQLite source keeps naive UTC timestamps: SOURCE_TIMEZONE=UTC")

    def extractor_url(self, url: URL, tls: MssqlTls | None) -> str:
        if not url.database or url.database == ":memory:":
            raise SourceError("an in-memory SQLite source cannot be shared with the extractor")
        return "sqlite://" + str(Path(url.database).resolve())

    def clock_sql(self, settle_seconds: float, timezone: str) -> str:
        mod = sql_literal(f"-{float(settle_seconds):.6f} seconds")
        return (
            f"SELECT strftime('%Y-%m-%d %H:%M:%f', 'now', {mod}),"
            f" strftime('%Y-%m-%d %H:%M:%f', 'now', {mod}) || '+00:00'"
        )

    def row_estimate_sql(self, quoted_table: str) -> str:
        return f"SELECT count(*) FROM {quoted_table}"  # no statistics; small sources

    def lower_bound_sql(self, literal: str, column: ColumnInfo, lookback_seconds: float) -> str:
        # SQLite compares the stored text; keep the stored format.
        mod = sql_literal(f"-{float(lookback_seconds):.6f} seconds")
        return f"strftime('%Y-%m-%d %H:%M:%f', {literal}, {mod})"

    def text_extract(self, source_type: sa.types.TypeEngine) -> str | None:
        return "CAST({} AS TEXT)" if exact_decimal(source_type) else None


DIALECTS: dict[str, type[Dialect]] = {
    "postgresql": PostgresDialect,
    "mssql": MssqlDialect,
    "sqlite": SqliteDialect,
}


def dialect_for(url: URL) -> Dialect:
    """The dialect of a SQLAlchemy URL's backend."""
    backend = url.get_backend_name()
    try:
        return DIALECTS[backend]()
    except KeyError:
        raise SourceError(f"unsupported source database {backend!r}") from None
