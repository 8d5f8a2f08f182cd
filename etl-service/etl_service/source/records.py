"""What reading the source deals in: column and table shapes, and the cycle's read."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import sqlalchemy as sa

__all__ = ["ColumnInfo", "SourceRead", "TableShape"]


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    duckdb_type: str | None  # None: keep the Arrow type the extractor produced
    is_timestamp: bool
    has_timezone: bool
    # SQL making the source send the column as exact text ("{}" is the quoted
    # column), cast to `duckdb_type` by the load: DECIMAL(p,s) columns.
    extract: str | None = None
    # SQL Server rowversion: read as a BIGINT, bounded by MIN_ACTIVE_ROWVERSION().
    is_rowversion: bool = False


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
class SourceRead:
    """One consistent read of the source for a whole cycle (its read transaction).

    `now_naive` / `now_aware` are the source's clock (start of the read
    transaction) minus the settle lag, as the source's own text, at the
    source's precision: naive in SOURCE_TIMEZONE, and with an offset.
    """

    now_naive: str
    now_aware: str
    pre_execution: list[str] = field(default_factory=list)
    snapshot_id: str | None = None  # PostgreSQL's exported snapshot, if any
    # SQL Server: MIN_ACTIVE_ROWVERSION() as an integer, read with the clock.
    # Every rowversion below it is committed: the next watermark of rowversion cursors.
    active_rowversion: str | None = None
    extractor_url: str | None = None  # None: the source's default ConnectorX URL
    broken: bool = False  # its connection was lost: begin a new one
    _conn: sa.Connection | None = None

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            # Read-only: nothing to commit. A dead connection has nothing to end.
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.rollback()
            with contextlib.suppress(sa.exc.DBAPIError):
                conn.close()
