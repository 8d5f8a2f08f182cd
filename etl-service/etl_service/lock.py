"""The sync lock: two ETL replicas never sync or publish at the same time.

On a PostgreSQL state store it is a session-level advisory lock held on a
dedicated connection for the whole cycle (it dies with the connection, so a
crashed replica never leaves it behind). On SQLite it is a file lock next to
the state database (the embedded case is one host).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from filelock import FileLock, Timeout

__all__ = ["SYNC_LOCK_KEY", "SyncLock"]

SYNC_LOCK_KEY = 0x65746C5F73796E63  # "etl_sync"


class SyncLock:
    def __init__(self, engine: sa.Engine, lock_path: Path) -> None:
        self.engine = engine
        self.lock_path = Path(lock_path)

    @contextlib.contextmanager
    def hold(self) -> Iterator[bool]:
        """Yield True with the lock held, or False when another replica has it."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                got = bool(
                    conn.execute(sa.text(f"SELECT pg_try_advisory_lock({SYNC_LOCK_KEY})")).scalar()
                )
                conn.commit()
                try:
                    yield got
                finally:
                    if got:
                        with contextlib.suppress(sa.exc.DBAPIError):
                            conn.execute(sa.text(f"SELECT pg_advisory_unlock({SYNC_LOCK_KEY})"))
                            conn.commit()
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
