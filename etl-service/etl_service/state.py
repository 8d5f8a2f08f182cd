"""The ETL's durable state: run history and per-table watermarks (SQLAlchemy)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

__all__ = ["StateStore"]

metadata = sa.MetaData()

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("rows", sa.JSON, nullable=False, default=dict),
    sa.Column("published_version", sa.String(64)),
    sa.Column("error", sa.Text),
)

table_state = sa.Table(
    "table_state",
    metadata,
    sa.Column("table_name", sa.String(255), primary_key=True),
    sa.Column("watermark", sa.String(64)),
    sa.Column("last_synced_at", sa.DateTime(timezone=True)),
    sa.Column("row_count", sa.BigInteger),
)


class StateStore:
    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def start_run(self) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                sync_runs.insert().values(started_at=datetime.now(UTC), status="running", rows={})
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(
        self,
        run_id: int,
        status: str,
        rows: dict[str, int],
        version: str | None = None,
        error: str | None = None,
        watermarks: dict[str, tuple[str | None, int]] | None = None,
    ) -> None:
        """Record the run's outcome and new watermarks in one transaction."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                sync_runs.update()
                .where(sync_runs.c.id == run_id)
                .values(
                    finished_at=now,
                    status=status,
                    rows=rows,
                    published_version=version,
                    error=error,
                )
            )
            for table, (watermark, count) in (watermarks or {}).items():
                values = {"watermark": watermark, "last_synced_at": now, "row_count": count}
                updated = conn.execute(
                    table_state.update().where(table_state.c.table_name == table).values(**values)
                )
                if updated.rowcount == 0:
                    conn.execute(table_state.insert().values(table_name=table, **values))

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sync_runs.select().order_by(sync_runs.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    def table_states(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(table_state.select().order_by(table_state.c.table_name))
            return [dict(r._mapping) for r in rows]
