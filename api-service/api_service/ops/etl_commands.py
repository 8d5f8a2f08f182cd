"""Handing commands to the ETL worker: rows in its queue (`etl_commands`).

The API inserts a pending row into the ETL's state database
(ETL_STATE_DATABASE_URL) with the table definition both services import
(analytics_shared/etl_commands.py); the running worker claims it at its next
cycle boundary, runs it and records the outcome, which `get` reads back.
Without a running worker the row stays pending until one starts (as for
`analytics-etl ... --no-wait`).

What must always hold: the API only ever inserts pending rows and reads rows;
claiming, running and finishing are the worker's. A state database that does
not answer is a 503 in the error shape, never a dead worker process.
SQLAlchemy is imported only when an `EtlCommands` is built (the setting is
set): it costs each worker about 28 MB, which a 512 MB container without
admin actions should not pay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from analytics_shared.logging_config import get_logger
from api_service.errors import CommandsUnavailable

__all__ = ["EtlCommands"]

if TYPE_CHECKING:
    import sqlalchemy as sa

log = get_logger(__name__)


def _row(row: sa.Row[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row._mapping.items():
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        out[key] = value
    return out


class EtlCommands:
    def __init__(self, database_url: str) -> None:
        import sqlalchemy

        from analytics_shared.etl_commands import etl_commands

        self.table = etl_commands
        self.db_error = sqlalchemy.exc.SQLAlchemyError
        # pool_pre_ping: the state database may restart between two admin actions.
        self.engine = sqlalchemy.create_engine(database_url, pool_pre_ping=True, pool_size=2)

    def _unavailable(self, exc: Exception) -> CommandsUnavailable:
        log.warning("etl_commands_unavailable", error=str(exc).splitlines()[0])
        return CommandsUnavailable(
            "the ETL's state database did not answer (ETL_STATE_DATABASE_URL); try again"
        )

    def submit(self, kind: str, args: dict[str, Any], submitted_by: str) -> dict[str, Any]:
        try:
            with self.engine.begin() as conn:
                inserted = conn.execute(
                    self.table.insert()
                    .values(
                        kind=kind,
                        args=args,
                        status="pending",
                        submitted_at=datetime.now(UTC),
                        submitted_by=submitted_by[:255],
                    )
                    .returning(*self.table.c)
                ).one()
        except self.db_error as exc:
            raise self._unavailable(exc) from exc
        log.info("etl_command_submitted", command_id=inserted.id, kind=kind, by=submitted_by)
        return _row(inserted)

    def get(self, command_id: int) -> dict[str, Any] | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(self.table.select().where(self.table.c.id == command_id)).first()
        except self.db_error as exc:
            raise self._unavailable(exc) from exc
        return _row(row) if row else None

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    self.table.select().order_by(self.table.c.id.desc()).limit(limit)
                ).all()
        except self.db_error as exc:
            raise self._unavailable(exc) from exc
        return [_row(r) for r in rows]

    def close(self) -> None:
        self.engine.dispose()
