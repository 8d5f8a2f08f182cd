"""DuckDB's memory_limit is shared by a worker's queries. A query that finds it
full (another query's sort holds it) runs again once it frees, within the
executor's wait (ADMISSION_WAIT_SECONDS), instead of failing at once; only a
limit that stays full is DuckDB's out-of-memory error (503 busy)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from api_service.data.snapshots import Snapshot, open_sandboxed
from api_service.query.executor import QueryExecutor

SORT = "SELECT * FROM t ORDER BY h DESC"


@pytest.fixture
def snapshot(tmp_path: Path) -> Iterator[Snapshot]:
    db = tmp_path / "t.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range AS id, md5(range::VARCHAR) AS h FROM range(400000)")
    con.close()
    # 32 MB holds one sort of this table, not two (measured: 64 MB holds both).
    con = open_sandboxed(db, memory_limit="32MB", threads=1, temp_directory=tmp_path / "spill")
    yield Snapshot(SimpleNamespace(version="v1"), db, con)  # type: ignore[arg-type]
    con.close()


def _hold_memory(snapshot: Snapshot) -> tuple[duckdb.DuckDBPyConnection, object]:
    """Another query's sorted result, open: it keeps DuckDB's memory."""
    cursor = snapshot.con.cursor()
    reader = cursor.sql("SELECT * FROM t ORDER BY h").to_arrow_reader(1000)
    reader.read_next_batch()
    return cursor, reader


def _run(executor: QueryExecutor, snapshot: Snapshot) -> int:
    async def go() -> int:
        result, _ = await executor.run_then(
            snapshot, SORT, None, lambda r: None, max_rows=10, timeout_seconds=30
        )
        return result.row_count

    return asyncio.run(go())


def test_a_query_waits_for_duckdb_memory_another_query_holds(snapshot: Snapshot) -> None:
    cursor, reader = _hold_memory(snapshot)

    def release() -> None:
        reader.close()  # type: ignore[attr-defined]
        cursor.close()

    threading.Timer(2.0, release).start()
    executor = QueryExecutor(1, oom_wait_seconds=10)
    try:
        assert _run(executor, snapshot) == 10
    finally:
        executor.shutdown()


def test_memory_that_stays_full_is_out_of_memory_after_the_wait(snapshot: Snapshot) -> None:
    cursor, reader = _hold_memory(snapshot)
    executor = QueryExecutor(1, oom_wait_seconds=0.5)
    try:
        with pytest.raises(duckdb.OutOfMemoryException):
            _run(executor, snapshot)
    finally:
        executor.shutdown()
        reader.close()  # type: ignore[attr-defined]
        cursor.close()
