"""Running a guarded query on a leased snapshot: off the event loop, with a
statement timeout (the cursor is interrupted) and a row cap."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import duckdb

from api_service.snapshots import Snapshot

__all__ = ["QueryResult", "QueryTimeout", "execute"]


class QueryTimeout(RuntimeError):
    pass


@dataclass
class QueryResult:
    columns: list[dict[str, str]]
    rows: list[tuple[Any, ...]]
    truncated: bool
    data_version: str
    execution_time_ms: float


def execute(
    snapshot: Snapshot,
    sql: str,
    params: dict[str, Any] | list[Any] | None,
    *,
    max_rows: int,
    timeout_seconds: float,
) -> QueryResult:
    """Blocking; call from a worker thread. Each call gets its own cursor."""
    started = time.perf_counter()
    cursor = snapshot.con.cursor()
    timed_out = threading.Event()

    def interrupt() -> None:
        timed_out.set()
        cursor.interrupt()

    timer = threading.Timer(timeout_seconds, interrupt)
    timer.start()
    try:
        cursor.execute(sql, params)
        rows = cursor.fetchmany(max_rows + 1)
        description = cursor.description or []
    except duckdb.InterruptException:
        raise QueryTimeout(
            f"the query ran longer than {timeout_seconds:g} s and was stopped"
        ) from None
    except duckdb.Error:
        if timed_out.is_set():
            raise QueryTimeout(
                f"the query ran longer than {timeout_seconds:g} s and was stopped"
            ) from None
        raise
    finally:
        timer.cancel()
        cursor.close()
    truncated = len(rows) > max_rows
    return QueryResult(
        columns=[{"name": d[0], "type": str(d[1])} for d in description],
        rows=rows[:max_rows],
        truncated=truncated,
        data_version=snapshot.version,
        execution_time_ms=round((time.perf_counter() - started) * 1000, 3),
    )
