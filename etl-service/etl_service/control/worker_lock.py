"""Who holds the ETL: `analytics-etl run`, or a data-changing command run directly.

The lock is what decides "a worker is running", so a killed worker can never
leave it behind: on PostgreSQL it is a session advisory lock held on a
dedicated connection (it dies with the process's connection); on SQLite it is
a file lock next to the state database (it dies with the process). The
`etl_worker` row only describes the holder (host, PID, since, heartbeat) for
messages; it is never trusted on its own.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from filelock import FileLock, Timeout

from etl_service.state import StateStore

__all__ = ["WORKER_LOCK_KEY", "Holder", "WorkerLock", "etl_worker"]

WORKER_LOCK_KEY = 0x65746C5F776F726B  # "etl_work"
_ROW = "etl"

etl_worker = sa.Table(
    "etl_worker",
    sa.MetaData(),
    sa.Column("role", sa.String(16), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("command", sa.String(255), nullable=False),
    sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

Role = Literal["worker", "command"]


@dataclass(frozen=True)
class Holder:
    role: str  # "worker" | "command" | "unknown" (the lock is held, the row not yet written)
    host: str
    pid: int
    command: str
    since: datetime | None
    heartbeat_at: datetime | None

    def describe(self) -> str:
        since = self.since.isoformat(timespec="seconds") if self.since else "unknown time"
        return f"`{self.command}` on {self.host} (PID {self.pid}) since {since}"


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if isinstance(value, datetime) else None


class WorkerLock:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.engine = state.engine
        self._conn: sa.Connection | None = None
        self._file: FileLock | None = None
        self.identity = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def _lock_path(self) -> Path:
        database = self.state.url.database or "etl_state.db"
        return Path(database).with_name(Path(database).name + ".worker.lock")

    # -- holding ----------------------------------------------------------------

    def try_acquire(self, role: Role, command: str) -> bool:
        """Take the lock for this process (until `release`); False when held elsewhere."""
        if self.state.is_postgresql:
            conn = self.engine.connect()
            got = bool(
                conn.execute(sa.text(f"SELECT pg_try_advisory_lock({WORKER_LOCK_KEY})")).scalar()
            )
            conn.commit()
            if not got:
                conn.close()
                return False
            self._conn = conn
        else:
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self._lock_path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                return False
            self._file = lock
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(etl_worker.delete())
            conn.execute(
                etl_worker.insert().values(
                    role=role,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    command=command,
                    since=now,
                    heartbeat_at=now,
                )
            )
        return True

    def heartbeat(self) -> bool:
        """Refresh the holder row; False when the lock was lost (its connection died)."""
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT 1")).fetchall()
                self._conn.commit()
            except sa.exc.DBAPIError:
                return False
        with self.engine.begin() as conn:
            conn.execute(
                etl_worker.update()
                .where(etl_worker.c.pid == os.getpid())
                .values(heartbeat_at=datetime.now(UTC))
            )
        return True

    def release(self) -> None:
        """Best effort: after an outage the lock's connection is dead (and the
        lock with it), which must not hide why the worker stopped."""
        with contextlib.suppress(sa.exc.SQLAlchemyError), self.engine.begin() as conn:
            conn.execute(etl_worker.delete().where(etl_worker.c.pid == os.getpid()))
        if self._conn is not None:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.execute(sa.text(f"SELECT pg_advisory_unlock({WORKER_LOCK_KEY})"))
                self._conn.commit()
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                self._conn.close()
            self._conn = None
        if self._file is not None:
            self._file.release()
            self._file = None

    # -- looking ----------------------------------------------------------------

    def is_held(self) -> bool:
        """True while some process holds the lock (this one included)."""
        if self._conn is not None or self._file is not None:
            return True
        if self.state.is_postgresql:
            # pg_locks shows a bigint advisory key as (classid, objid) = (high, low).
            with self.engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND granted AND classid = :hi AND objid = :lo AND objsubid = 1"
                            " AND database = (SELECT oid FROM pg_database"
                            " WHERE datname = current_database())"
                        ),
                        {"hi": WORKER_LOCK_KEY >> 32, "lo": WORKER_LOCK_KEY & 0xFFFFFFFF},
                    ).scalar()
                )
        if not self._lock_path.exists():
            return False
        probe = FileLock(str(self._lock_path), timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return True
        probe.release()
        return False

    def holder(self) -> Holder | None:
        """Who holds the lock, or None when nobody does."""
        if not self.is_held():
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(etl_worker).order_by(etl_worker.c.since.desc())).first()
        if row is None:
            return Holder("unknown", "unknown host", 0, "analytics-etl", None, None)
        return Holder(
            role=row.role,
            host=row.host,
            pid=row.pid,
            command=row.command,
            since=_aware(row.since),
            heartbeat_at=_aware(row.heartbeat_at),
        )
