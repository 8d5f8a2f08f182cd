"""Mapping source column types to DuckDB types, faithfully.

The extractor's Arrow types are close but not exact (ConnectorX widens
DECIMAL(p,s) to DECIMAL(38,10), leaves UUIDs as strings), so the declared
source type decides the DuckDB column type. `None` means "keep Arrow's type".
See docs/architecture.md for the full table.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mssql, postgresql

__all__ = ["duckdb_type"]


def duckdb_type(source_type: sa.types.TypeEngine) -> str | None:
    # Order matters: dialect-specific classes subclass the generic ones.
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
    if isinstance(source_type, sa.Numeric) and not isinstance(source_type, sa.Float):
        precision, scale = source_type.precision, source_type.scale
        if precision is not None and precision <= 38:
            return f"DECIMAL({precision},{scale or 0})"
        return None
    if isinstance(source_type, sa.DateTime):
        return "TIMESTAMPTZ" if source_type.timezone else "TIMESTAMP"
    if isinstance(source_type, sa.Date):
        return "DATE"
    return None
