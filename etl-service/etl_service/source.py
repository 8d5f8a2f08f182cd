"""Reading the source database as a stream of Arrow record batches.

Rows go from the driver straight into Arrow (ConnectorX, written in Rust),
never through pandas or Python objects. The same code serves SQL Server in
production and PostgreSQL/SQLite in tests and the demo: only the URL differs.
SQLAlchemy is used for what it is good at: parsing URLs, reflecting tables,
and holding the snapshot transaction and the source clock.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import connectorx as cx
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from etl_service.type_mapping import duckdb_type, is_timestamp, text_extract

__all__ = [
    "ColumnInfo",
    "MssqlTls",
    "Source",
    "SourceError",
    "SourceSnapshot",
    "TableShape",
    "connectorx_url",
]

# Error texts (from ConnectorX's Rust drivers and from DBAPI drivers) that
# mean "the connection or server had a problem; trying again may work".
_TRANSIENT = re.compile(
    r"connection|connect|timed? ?out|refused|reset by peer|broken pipe|terminat|"
    r"server closed|unexpected eof|shutting down|too many clients|could not receive|"
    r"deadlock|serialization|canceling statement due to conflict|recovery mode|"
    r"login failed|transport|pool|"
    # the exporting connection of the cycle's snapshot died: read a new one
    r"invalid snapshot identifier",
    re.IGNORECASE,
)


class SourceError(RuntimeError):
    """The source could not be read (connection, permissions, missing table)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient

    @classmethod
    def from_exception(cls, what: str, exc: BaseException) -> SourceError:
        text = str(getattr(exc, "orig", None) or exc)
        transient = isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or bool(
            _TRANSIENT.search(text)
        )
        return cls(f"{what}: {text.strip()}", transient=transient)


@dataclass(frozen=True)
class MssqlTls:
    """How ConnectorX checks SQL Server's certificate. Whether TLS is required
    comes from the URL (pymssql's `encryption=require`), so both drivers agree."""

    trust_server_certificate: bool = False
    ca_file: Path | None = None


def connectorx_url(url: str | URL, tls: MssqlTls | None = None) -> str:
    """Translate a SQLAlchemy URL into the form ConnectorX expects."""
    u = make_url(url) if isinstance(url, str) else url
    backend = u.get_backend_name()
    if backend == "sqlite":
        if not u.database or u.database == ":memory:":
            raise SourceError("an in-memory SQLite source cannot be shared with the extractor")
        return "sqlite://" + str(Path(u.database).resolve())
    if backend == "postgresql":
        return u.set(drivername="postgresql").render_as_string(hide_password=False)
    if backend == "mssql":
        tls = tls or MssqlTls()
        query: dict[str, str] = {}
        if str(u.query.get("encryption", "")).lower() == "require":
            query["encrypt"] = "true"
        if tls.trust_server_certificate:
            query["trust_server_certificate"] = "true"
        elif tls.ca_file is not None:
            query["trust_server_certificate_ca"] = str(tls.ca_file)
        return u.set(drivername="mssql", query=query).render_as_string(hide_password=False)
    raise SourceError(f"unsupported source database {backend!r}")


def _quote(dialect: sa.Dialect, name: str) -> str:
    return ".".join(dialect.identifier_preparer.quote(part) for part in name.split("."))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    duckdb_type: str | None  # None: keep the Arrow type the extractor produced
    is_timestamp: bool
    has_timezone: bool
    # SQL making the source send the column as exact text ("{}" is the quoted
    # column), cast to `duckdb_type` by the load: DECIMAL(p,s) columns.
    extract: str | None = None


@dataclass(frozen=True)
class TableShape:
    """What reflection tells about a source table."""

    columns: tuple[ColumnInfo, ...]
    primary_key: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnInfo:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass
class SourceSnapshot:
    """One consistent read of the source for a whole cycle.

    `now_naive` / `now_aware` are the source's clock (start of the snapshot
    transaction) minus the settle lag, as the source's own text, at the
    source's precision: naive in SOURCE_TIMEZONE, and with an offset.
    """

    now_naive: str
    now_aware: str
    pre_execution: list[str] = field(default_factory=list)
    snapshot_id: str | None = None
    extractor_url: str | None = None  # None: the source's default ConnectorX URL
    broken: bool = False  # its connection was lost: open a new one
    _conn: sa.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # Read-only: nothing to commit. A dead connection has nothing to end.
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.rollback()
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.close()


class Source:
    def __init__(self, url: str, *, timezone: str = "UTC", tls: MssqlTls | None = None) -> None:
        self.url = make_url(url)
        self.backend = self.url.get_backend_name()
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        self.timezone = timezone
        self._cx_url = connectorx_url(self.url, tls)
        if self.backend == "sqlite" and timezone.upper() != "UTC":
            raise SourceError("a SQLite source keeps naive UTC timestamps: SOURCE_TIMEZONE=UTC")

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
            raise SourceError.from_exception(f"cannot reflect {table!r}", exc) from exc
        if not columns:
            raise SourceError(f"table {table!r} does not exist in the source")
        infos = []
        for c in columns:
            ts, tz = is_timestamp(c["type"])
            extract = text_extract(c["type"], self.backend)
            infos.append(ColumnInfo(c["name"], duckdb_type(c["type"]), ts, tz, extract))
        return TableShape(tuple(infos), tuple(pk.get("constrained_columns") or ()))

    def column_names(self, table: str) -> list[str]:
        """The table's current column names, in order (one cheap query, no reflection).

        Reads select their columns explicitly (some as text), so a column
        added, dropped or renamed since reflection is noticed here.
        """
        try:
            with self.engine.connect() as conn:
                result = conn.execute(sa.text(f"SELECT * FROM {self.quote(table)} WHERE 1 = 0"))
                names = list(result.keys())
                result.close()
        except sa.exc.DBAPIError as exc:
            raise SourceError.from_exception(f"cannot read the columns of {table!r}", exc) from exc
        return names

    def columns(self, table: str) -> list[tuple[str, str | None]]:
        """(name, DuckDB type or None to keep the extractor's) for each column."""
        return [(c.name, c.duckdb_type) for c in self.shape(table).columns]

    # -- the snapshot and the clock ------------------------------------------

    def _clock_sql(self, settle_seconds: float) -> str:
        s = f"{float(settle_seconds):.6f}"
        tz = _literal(self.timezone)
        if self.backend == "postgresql":
            # CURRENT_TIMESTAMP is the transaction's start: never after the snapshot.
            lagged = f"(CURRENT_TIMESTAMP - make_interval(secs => {s}))"
            return (
                f"SELECT CAST({lagged} AT TIME ZONE {tz} AS text),"
                f" to_char({lagged} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00',"
                " pg_export_snapshot()"
            )
        if self.backend == "mssql":
            ms = int(settle_seconds * 1000)
            lagged = f"DATEADD(millisecond, -{ms}, SYSDATETIMEOFFSET())"
            return (
                "SELECT CONVERT(varchar(27),"
                f" CAST({lagged} AT TIME ZONE {tz} AS datetime2(7)), 121),"
                f" CONVERT(varchar(34), SWITCHOFFSET({lagged}, '+00:00'), 121)"
            )
        if self.backend == "sqlite":
            mod = _literal(f"-{s} seconds")
            return (
                f"SELECT strftime('%Y-%m-%d %H:%M:%f', 'now', {mod}),"
                f" strftime('%Y-%m-%d %H:%M:%f', 'now', {mod}) || '+00:00'"
            )
        raise SourceError(f"no source clock for {self.backend!r}")

    def open_snapshot(self, settle_seconds: float) -> SourceSnapshot:
        """Start the cycle's read transaction and read the source clock in it.

        PostgreSQL: a REPEATABLE READ transaction exports its snapshot and
        every ConnectorX query imports it, so all tables of the cycle see the
        same committed state. SQL Server: see docs/architecture.md (SNAPSHOT).
        """
        try:
            if self.backend == "postgresql":
                conn = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
                try:
                    conn.begin()
                    # One round trip: the clock and the snapshot, in one statement.
                    naive, aware, snap_id = conn.execute(
                        sa.text(self._clock_sql(settle_seconds))
                    ).one()
                    extractor_url = self._extractor_url(conn)
                except BaseException:
                    conn.close()
                    raise
                pre = [
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                    f"SET TRANSACTION SNAPSHOT {_literal(str(snap_id))}",
                ]
                return SourceSnapshot(
                    str(naive), str(aware), pre, str(snap_id), extractor_url, _conn=conn
                )
            with self.engine.connect() as conn:
                naive, aware = conn.execute(sa.text(self._clock_sql(settle_seconds))).one()
            return SourceSnapshot(str(naive), str(aware))
        except sa.exc.DBAPIError as exc:
            raise SourceError.from_exception("cannot open the source snapshot", exc) from exc

    def _extractor_url(self, conn: sa.Connection) -> str | None:
        """ConnectorX's URL for this cycle: TLS exactly when libpq negotiated it.

        Without `sslmode` in the URL (libpq's default `prefer`), ConnectorX sets
        up a TLS connector for every query even when the server has TLS off,
        which costs more than the rest of a small delta read (~8 ms of ~12 ms).
        When the snapshot connection, opened by libpq with the same URL, is not
        encrypted, the extractor is told `sslmode=disable`: the same outcome
        `prefer` reaches, without the attempt. An explicit `require`/`verify-*`
        is never touched.
        """
        if str(self.url.query.get("sslmode", "prefer")) not in ("prefer", "allow", "disable"):
            return None
        dbapi = conn.connection.dbapi_connection
        pgconn = getattr(dbapi, "pgconn", None)  # psycopg 3
        in_use = getattr(pgconn, "ssl_in_use", None)
        if in_use is None:  # psycopg2
            in_use = getattr(getattr(dbapi, "info", None), "ssl_in_use", None)
        if in_use is not False:
            return None
        plain = make_url(self._cx_url).update_query_dict({"sslmode": "disable"})
        return plain.render_as_string(hide_password=False)

    # -- queries ---------------------------------------------------------------

    def lower_bound_sql(self, watermark: str, column: ColumnInfo, lookback_seconds: float) -> str:
        """SQL for `watermark - lookback`, computed by the source at its precision."""
        if not column.is_timestamp:
            if not re.fullmatch(r"-?\d+(\.\d+)?", watermark):
                raise SourceError(f"watermark {watermark!r} of {column.name!r} is not a number")
            return watermark
        lit = _literal(watermark)
        s = f"{float(lookback_seconds):.6f}"
        if self.backend == "postgresql":
            cast = "timestamptz" if column.has_timezone else "timestamp"
            return f"(CAST({lit} AS {cast}) - make_interval(secs => {s}))"
        if self.backend == "mssql":
            cast = "datetimeoffset(7)" if column.has_timezone else "datetime2(7)"
            ms = int(lookback_seconds * 1000)
            return f"DATEADD(millisecond, -{ms}, CAST({lit} AS {cast}))"
        if self.backend == "sqlite":
            # SQLite compares the stored text; keep the stored format.
            return f"strftime('%Y-%m-%d %H:%M:%f', {lit}, {_literal(f'-{s} seconds')})"
        raise SourceError(f"no incremental reads for {self.backend!r}")

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
        self, sql: str, batch_size: int, snapshot: SourceSnapshot | None = None
    ) -> pa.RecordBatchReader:
        """Stream the result of `sql` as Arrow record batches of about `batch_size` rows."""
        kwargs: dict[str, Any] = {}
        url = self._cx_url
        if snapshot is not None:
            if snapshot.pre_execution:
                kwargs["pre_execution_query"] = snapshot.pre_execution
            url = snapshot.extractor_url or url
        try:
            return cx.read_sql(
                url, sql, return_type="arrow_stream", batch_size=batch_size, **kwargs
            )
        except Exception as exc:  # ConnectorX raises plain RuntimeError/ValueError
            raise SourceError.from_exception("source query failed", exc) from exc

    def read_table(
        self, table: str, columns: Sequence[str | ColumnInfo] | None, batch_size: int
    ) -> pa.RecordBatchReader:
        return self.read(self.select_sql(table, columns), batch_size)
