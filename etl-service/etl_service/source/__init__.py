"""The source database: one dialect class per database, reflection, Arrow reads.

dialects.py      the `Dialect` protocol and PostgreSQL, SQL Server, SQLite
records.py       ColumnInfo, TableShape, and the cycle's SourceRead
reader.py        Source: reflection, the read transaction, Arrow streams
type_mapping.py  source column type -> DuckDB type
"""

from etl_service.errors import SourceError, SourceUnavailable
from etl_service.source.dialects import Dialect, MssqlTls, dialect_for
from etl_service.source.reader import Source, connectorx_url
from etl_service.source.records import ColumnInfo, SourceRead, TableShape

__all__ = [
    "ColumnInfo",
    "Dialect",
    "MssqlTls",
    "Source",
    "SourceError",
    "SourceRead",
    "SourceUnavailable",
    "TableShape",
    "connectorx_url",
    "dialect_for",
]
