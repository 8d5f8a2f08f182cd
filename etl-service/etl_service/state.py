"""The ETL's durable state (SQLAlchemy; SQLite embedded, PostgreSQL in production).

Per-table watermarks and reconcile times, the run history, and the
dead-letter queue of runs/tables that failed after their last retry. The
schema is managed by the Alembic migrations in `etl_service/migrations`,
applied when a StateStore starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from analytics_shared.errors import ConfigurationError
from etl_service.errors import StateNotFound, StateStoreUnavailable

__all__ = [
    "RunStatus",
    "StateStore",
    "TableState",
    "TableUpdate",
    "dead_letters",
    "schema_changes",
    "sync_runs",
    "table_state",
]

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_xact_lock key serialising concurrent migrations ("etl_migr").
_MIGRATION_LOCK = 0x65746C5F6D696772

metadata = sa.MetaData()
TZ = sa.DateTime(timezone=True)

sync_runs = sa.Table(
    "sync_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("started_at", TZ, nullable=False),
    sa.Column("finished_at", TZ),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("rows", sa.JSON, nullable=False),
    sa.Column("published_version", sa.String(64)),
    sa.Column("error", sa.Text),
)

table_state = sa.Table(
    "table_state",
    metadata,
    sa.Column("table_name", sa.String(255), primary_key=True),
    sa.Column("watermark", sa.String(64)),
    sa.Column("last_synced_at", TZ),
    sa.Column("last_reconciled_at", TZ),
    sa.Column("last_full_load_at", TZ),
    sa.Column("row_count", sa.BigInteger),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer),
    sa.Column("table_name", sa.String(255)),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("first_failed_at", TZ, nullable=False),
    sa.Column("last_failed_at", TZ, nullable=False),
    sa.Column("closed_at", TZ),
)

schema_changes = sa.Table(
    "schema_changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer),
    sa.Column("table_name", sa.String(255), nullable=False),
    sa.Column("detected_at", TZ, nullable=False),
    sa.Column("contract", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("change", sa.JSON, nullable=False),
)

# What `sync_runs.status` holds: "running" until the run is recorded, then
# success | partial (some tables failed) | failed | abandoned (shutdown
# mid-cycle, or a killed process's run closed by the next cycle).
RunStatus = Literal["running", "success", "partial", "failed", "abandoned"]

CYCLE = "*cycle*"  # how a whole-cycle dead letter is shown


def _aware(value: Any) -> Any:
    """SQLite hands back naive datetimes; everything stored here is UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _row(r: sa.Row[Any]) -> dict[str, Any]:
    return {k: _aware(v) for k, v in r._mapping.items()}


@dataclass(frozen=True)
class TableState:
    """One row of `table_state`: what the last committed cycles left for a table."""

    table_name: str
    watermark: str | None = None
    last_synced_at: datetime | None = None
    last_reconciled_at: datetime | None = None
    last_full_load_at: datetime | None = None
    row_count: int | None = None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> TableState:
        return cls(**_row(row))


@dataclass(frozen=True)
class TableUpdate:
    """What one cycle learned about one table, committed with the run."""

    watermark: str | None
    row_count: int
    reconciled: bool = False
    full_load: bool = False


def close_running(engine: sa.Engine, table: sa.Table, **values: Any) -> list[int]:
    """Set `values` (and `finished_at`) on the rows of `table` still "running",
    whose process is known to be gone; returns their ids."""
    with engine.begin() as conn:
        running = table.c.status == "running"
        ids = [int(r[0]) for r in conn.execute(sa.select(table.c.id).where(running))]
        if ids:
            conn.execute(
                table.update()
                .where(table.c.id.in_(ids))
                .values(finished_at=datetime.now(UTC), **values)
            )
    return ids


class StateStore:
    """`must_exist`: refuse a SQLite file that is not there instead of creating it
    (read-only commands must not make an empty state look like the real one)."""

    def __init__(self, url: str, *, must_exist: bool = False) -> None:
        try:
            self.url = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise ConfigurationError("DATABASE_URL is not a database URL") from None
        if self.url.get_backend_name() == "sqlite" and self.url.database:
            path = Path(self.url.database)
            if must_exist and not path.exists():
                raise StateNotFound(
                    f"no state database at {path} (DATABASE_URL is unset, so DATA_DIR"
                    f"={path.parent} is used); run where the worker runs, set DATABASE_URL"
                    " or DATA_DIR, or `source` the env file `make demo` wrote"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = sa.create_engine(self.url, pool_pre_ping=True)
            self.migrate()
        except sa.exc.NoSuchModuleError:
            raise ConfigurationError(
                f"DATABASE_URL: unsupported scheme {self.url.drivername!r}"
                " (use postgresql://... or sqlite:////absolute/path.db)"
            ) from None
        except sa.exc.DBAPIError as exc:
            reason = next(iter(str(exc.orig or exc).strip().splitlines()), type(exc).__name__)
            raise StateStoreUnavailable(
                f"DATABASE_URL: cannot reach the state database {self.where} ({reason});"
                " check that the database is up and DATABASE_URL names it"
            ) from exc

    @property
    def where(self) -> str:
        """The state database without its password, for messages."""
        return self.url.render_as_string(hide_password=True)

    @property
    def is_postgresql(self) -> bool:
        return self.url.get_backend_name() == "postgresql"

    def migrate(self) -> None:
        """`alembic upgrade head`, serialised between replicas on PostgreSQL."""
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per plugin otherwise
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            if self.is_postgresql:
                conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def close(self) -> None:
        self.engine.dispose()

    # -- runs ----------------------------------------------------------------

    def start_run(self, kind: str = "sync") -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                sync_runs.insert().values(
                    kind=kind, started_at=datetime.now(UTC), status="running", rows={}
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def abandon_interrupted_runs(self) -> list[int]:
        """Mark runs still "running" as abandoned. Called with the sync lock
        held, so no live process owns them: their process was killed (or
        lost its host) before recording them, and would show "running"
        forever. The cycle that calls this re-reads what they did not commit."""
        return close_running(
            self.engine,
            sync_runs,
            status="abandoned",
            error="interrupted: its process stopped before recording the run"
            " (killed, or its host lost); the next cycle re-read its changes",
        )

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        rows: dict[str, Any],
        version: str | None = None,
        error: str | None = None,
        tables: dict[str, TableUpdate] | None = None,
    ) -> None:
        """Record the run's outcome and the tables' new state in one transaction."""
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
            for table, update in (tables or {}).items():
                values: dict[str, Any] = {
                    "watermark": update.watermark,
                    "last_synced_at": now,
                    "row_count": update.row_count,
                }
                if update.reconciled or update.full_load:
                    values["last_reconciled_at"] = now
                if update.full_load:
                    values["last_full_load_at"] = now
                updated = conn.execute(
                    table_state.update().where(table_state.c.table_name == table).values(**values)
                )
                if updated.rowcount == 0:
                    conn.execute(table_state.insert().values(table_name=table, **values))

    def record_schema_change(
        self, run_id: int | None, table: str, contract: str, action: str, change: dict[str, Any]
    ) -> bool:
        """Record a schema change unless it repeats the table's last record (a
        refused change is seen again every cycle); True when it is new."""
        with self.engine.begin() as conn:
            last = conn.execute(
                sa.select(schema_changes.c.action, schema_changes.c.change)
                .where(schema_changes.c.table_name == table)
                .order_by(schema_changes.c.id.desc())
                .limit(1)
            ).first()
            if last is not None and (last.action, last.change) == (action, change):
                return False
            conn.execute(
                schema_changes.insert().values(
                    run_id=run_id,
                    table_name=table,
                    detected_at=datetime.now(UTC),
                    contract=contract,
                    action=action,
                    change=change,
                )
            )
        return True

    def schema_changes(
        self, limit: int = 20, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The newest schema changes first (those after `since`, when given)."""
        query = schema_changes.select().order_by(schema_changes.c.id.desc()).limit(limit)
        if since is not None:
            query = query.where(schema_changes.c.detected_at > since)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sync_runs.select().order_by(sync_runs.c.id.desc()).limit(limit))
            return [_row(r) for r in rows]

    def last_success(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sync_runs.select()
                .where(sync_runs.c.status.in_(("success", "partial")))
                .order_by(sync_runs.c.id.desc())
                .limit(1)
            ).first()
            return _row(row) if row else None

    # -- tables --------------------------------------------------------------

    def table_states(self) -> list[TableState]:
        with self.engine.connect() as conn:
            rows = conn.execute(table_state.select().order_by(table_state.c.table_name))
            return [TableState.from_row(r) for r in rows]

    def table(self, name: str) -> TableState | None:
        with self.engine.connect() as conn:
            row = conn.execute(table_state.select().where(table_state.c.table_name == name)).first()
            return TableState.from_row(row) if row else None

    def forget_table(self, name: str) -> None:
        """Drop a table's watermark so its next sync is a full load (backfill)."""
        with self.engine.begin() as conn:
            conn.execute(table_state.delete().where(table_state.c.table_name == name))

    # -- dead letters ----------------------------------------------------------

    def dead_letter(self, run_id: int | None, table: str | None, error: str, attempts: int) -> int:
        """Record a failure after its last retry; repeated failures of the same
        table (or of whole cycles) accumulate on one open entry."""
        now = datetime.now(UTC)
        match = (
            dead_letters.c.table_name.is_(None)
            if table is None
            else dead_letters.c.table_name == table
        )
        with self.engine.begin() as conn:
            existing = conn.execute(
                sa.select(dead_letters.c.id, dead_letters.c.attempts)
                .where(dead_letters.c.status == "open", match)
                .order_by(dead_letters.c.id)
                .limit(1)
            ).first()
            if existing is not None:
                conn.execute(
                    dead_letters.update()
                    .where(dead_letters.c.id == existing.id)
                    .values(
                        run_id=run_id,
                        error=error,
                        attempts=existing.attempts + attempts,
                        last_failed_at=now,
                    )
                )
                return int(existing.id)
            result = conn.execute(
                dead_letters.insert().values(
                    run_id=run_id,
                    table_name=table,
                    error=error,
                    attempts=attempts,
                    status="open",
                    first_failed_at=now,
                    last_failed_at=now,
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def resolve_dead_letters(self, tables: list[str], *, cycle: bool = False) -> int:
        """Close the open entries of tables (and of whole cycles) that now succeed."""
        cond: sa.ColumnElement[bool] = dead_letters.c.table_name.in_(tables)
        if cycle:
            cond = sa.or_(cond, dead_letters.c.table_name.is_(None))
        with self.engine.begin() as conn:
            result = conn.execute(
                dead_letters.update()
                .where(dead_letters.c.status == "open", cond)
                .values(status="resolved", closed_at=datetime.now(UTC))
            )
            return int(result.rowcount)

    def dead_letters(self, status: str | None = "open") -> list[dict[str, Any]]:
        query = dead_letters.select().order_by(dead_letters.c.id)
        if status is not None:
            query = query.where(dead_letters.c.status == status)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query)]

    def get_dead_letter(self, entry_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(dead_letters.select().where(dead_letters.c.id == entry_id)).first()
            return _row(row) if row else None

    def close_dead_letter(self, entry_id: int, status: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                dead_letters.update()
                .where(dead_letters.c.id == entry_id, dead_letters.c.status == "open")
                .values(status=status, closed_at=datetime.now(UTC))
            )
            return bool(result.rowcount)
