"""Reading the source database as a stream of Arrow record batches.

Rows go from the driver straight into Arrow (ConnectorX, written in Rust),
never through pandas or Python objects. The same code serves SQL Server in
production and PostgreSQL/SQLite in tests and the demo: only the URL differs.
SQLAlchemy is used for what it is good at: parsing URLs and reflecting tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import connectorx as cx
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

__all__ = ["Source", "SourceError", "connectorx_url"]


class SourceError(RuntimeError):
    """The source could not be read (connection, permissions, missing table)."""


def connectorx_url(url: str | URL) -> str:
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
        plain = u.set(drivername="mssql", query={})
        trust = str(u.query.get("TrustServerCertificate", "no")).lower() in ("yes", "true", "1")
        rendered = plain.render_as_string(hide_password=False)
        return rendered + ("?trust_server_certificate=true" if trust else "")
    if backend == "mysql":
        return u.set(drivername="mysql").render_as_string(hide_password=False)
    raise SourceError(f"unsupported source database {backend!r}")


def _quote(dialect: sa.Dialect, name: str) -> str:
    return ".".join(dialect.identifier_preparer.quote(part) for part in name.split("."))


class Source:
    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        self._cx_url = connectorx_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def quote(self, name: str) -> str:
        return _quote(self.engine.dialect, name)

    def columns(self, table: str) -> list[tuple[str, str | None]]:
        """(name, DuckDB type or None to keep the extractor's) for each column."""
        from etl_service.type_mapping import duckdb_type

        return [(c["name"], duckdb_type(c["type"])) for c in self._reflect(table)]

    def _reflect(self, table: str) -> list[Any]:
        schema, _, name = table.rpartition(".")
        try:
            columns = sa.inspect(self.engine).get_columns(name, schema=schema or None)
        except sa.exc.NoSuchTableError:
            raise SourceError(f"table {table!r} does not exist in the source") from None
        except sa.exc.DBAPIError as exc:
            raise SourceError(f"cannot reflect {table!r}: {exc.orig}") from exc
        if not columns:
            raise SourceError(f"table {table!r} does not exist in the source")
        return list(columns)

    def read(self, sql: str, batch_size: int) -> pa.RecordBatchReader:
        """Stream the result of `sql` as Arrow record batches of about `batch_size` rows."""
        try:
            return cx.read_sql(self._cx_url, sql, return_type="arrow_stream", batch_size=batch_size)
        except Exception as exc:  # ConnectorX raises plain RuntimeError/ValueError
            raise SourceError(f"source query failed: {exc}") from exc

    def read_table(
        self, table: str, columns: Sequence[str] | None, batch_size: int
    ) -> pa.RecordBatchReader:
        cols = ", ".join(self.quote(c) for c in columns) if columns else "*"
        return self.read(f"SELECT {cols} FROM {self.quote(table)}", batch_size)
