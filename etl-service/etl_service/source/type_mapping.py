"""Mapping source column types to DuckDB types, faithfully.

The extractor's Arrow types are close but not exact (ConnectorX widens
DECIMAL(p,s) to DECIMAL(38,10) and INTEGER to BIGINT, and leaves UUIDs as
strings), so the declared source type decides the DuckDB column type.
`None` means "keep the Arrow type". docs/architecture.md has the full table.

`exact_decimal` says which columns the source should send as text: DECIMAL(p,s)
columns (each dialect writes the SQL: `Dialect.text_extract`). ConnectorX's
decimal decoding gives DECIMAL(38,10) (digits past the tenth decimal place are
lost) and DuckDB's rescale to (p,s) is slow (about a third of a full load's
time on the benchmark table); the source's own text is exact, cheaper to
decode, and DuckDB parses it straight into DECIMAL(p,s).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql

__all__ = ["duckdb_type", "exact_decimal", "is_rowversion", "is_timestamp"]


def duckdb_type(source_type: sa.types.TypeEngine) -> str | None:
    # Order matters: dialect-specific classes subclass the generic ones.
    if is_rowversion(source_type):
        return "BIGINT"  # read as an integer (Dialect.text_extract), so it can be a cursor
    if isinstance(source_type, mssql.MONEY):
        return "DECIMAL(19,4)"
    if isinstance(source_type, mssql.SMALLMONEY):
        return "DECIMAL(10,4)"
    if isinstance(source_type, mssql.UNIQUEIDENTIFIER | postgresql.UUID | sa.Uuid):
        return "UUID"
    if isinstance(source_type, mssql.DATETIMEOFFSET):
        return "TIMESTAMPTZ"
    if isinstance(source_type, mssql.BIT | sa.Boolean):
        return "BOOLEAN"
    if isinstance(source_type, mssql.TINYINT):
        return "UTINYINT"  # SQL Server tinyint is 0..255
    if isinstance(source_type, sa.SmallInteger):
        return "SMALLINT"
    if isinstance(source_type, sa.BigInteger):
        return "BIGINT"
    if isinstance(source_type, sa.Integer):
        return "INTEGER"
    if isinstance(source_type, sa.Float):
        # REAL / float(1..24) is single precision; everything else double.
        precision = getattr(source_type, "precision", None)
        is_real = isinstance(source_type, sa.REAL) or (precision is not None and precision <= 24)
        return "REAL" if is_real else "DOUBLE"
    if isinstance(source_type, sa.Numeric):
        precision, scale = source_type.precision, source_type.scale
        if precision is not None and precision <= 38:
            return f"DECIMAL({precision},{scale or 0})"
        return None  # unbounded NUMERIC: keep the extractor's DECIMAL(38,10)
    if isinstance(source_type, sa.DateTime):
        return "TIMESTAMPTZ" if source_type.timezone else "TIMESTAMP"
    if isinstance(source_type, sa.Date):
        return "DATE"
    if isinstance(source_type, sa.Time):
        return "TIME"
    if isinstance(source_type, sa.String | sa.Enum):
        return "VARCHAR"
    if isinstance(source_type, sa.LargeBinary | sa.types._Binary):
        return "BLOB"
    return None


def is_timestamp(source_type: sa.types.TypeEngine) -> tuple[bool, bool]:
    """(is a date/time cursor, carries a time zone)."""
    if isinstance(source_type, mssql.DATETIMEOFFSET):
        return True, True
    if isinstance(source_type, sa.DateTime):
        return True, bool(source_type.timezone)
    if isinstance(source_type, sa.Date):
        return True, False
    return False, False


def is_rowversion(source_type: sa.types.TypeEngine) -> bool:
    """SQL Server `rowversion` (alias `timestamp`): 8 bytes the database bumps on every write."""
    return isinstance(source_type, mssql.TIMESTAMP)


def exact_decimal(source_type: sa.types.TypeEngine) -> bool:
    """True when the column maps to a DuckDB DECIMAL(p,s): the source sends it as text.

    Each dialect says how (`Dialect.text_extract`); unbounded NUMERIC keeps the
    extractor's decoding.
    """
    target = duckdb_type(source_type)
    return target is not None and target.startswith("DECIMAL(")
