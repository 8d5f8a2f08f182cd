"""Running guarded queries off the event loop, on a bounded worker pool.

Each pool thread keeps one DuckDB cursor per snapshot (a cursor is a
connection to the same read-only database, cheap to reuse, unsafe to share),
so many queries of one Gunicorn worker run in parallel while DuckDB releases
the GIL. The pool size bounds concurrent queries per worker; queued queries
wait in the pool's queue without holding the event loop.

A statement timeout counts from submission and interrupts the running cursor;
a query still queued at its deadline never starts. The caller is answered at
the deadline (plus `ABANDON_GRACE_SECONDS` for the interrupt to land) even
when DuckDB ignores the interrupt (it does while planning): the work is then
abandoned, and `on_done` tells the caller when the thread is really free. Results come back as Arrow
tables capped at `max_rows` (`truncated` tells whether there was more).

A stream's query runs to its end before the stream opens: its batches are
spooled to an Arrow file on local disk (the snapshot's spill directory) and
the stream reads that file. DuckDB's part of an export (its sort, the
blocks a scan pins) is then over before the first byte is sent, so DuckDB
running out of memory, an error in a late row or the statement timeout is a
clean error response rather than a cut connection; and a slow client holds a
file, not DuckDB's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from analytics_shared.snapshot_file import quote_ident
from api_service.data.snapshots import Snapshot
from api_service.errors import QueryTimeout, ResultTooLarge
from api_service.ops.memory_budget import LIGHT_RESULT_BYTES
from api_service.query.admission import AdmissionGate
from api_service.query.encodings import Column

__all__ = [
    "Params",
    "QueryExecutor",
    "QueryResult",
    "ResultStream",
]

T = TypeVar("T")

# How long past its deadline an interrupted query may take to stop before its
# caller is answered anyway (the thread finishes on its own; `on_done` says when).
ABANDON_GRACE_SECONDS = 0.25

# A query DuckDB could not give memory to runs again after these pauses
# (doubling), within the executor's `oom_wait_seconds` (ADMISSION_WAIT_SECONDS).
OOM_FIRST_PAUSE_SECONDS = 0.05
OOM_MAX_PAUSE_SECONDS = 1.0

# Values for `$name` or `?` placeholders, bound by DuckDB (never interpolated).
Params = dict[str, Any] | list[Any] | None

# Types Arrow (or Parquet) cannot carry faithfully are sent as DuckDB's text form;
# the column's DuckDB type still says what they are. UHUGEINT above 2**127
# does not fit Arrow's decimal128.
_AS_TEXT_PREFIXES = (
    "INTERVAL",
    "UHUGEINT",
    "TIME WITH TIME ZONE",
    "BIT",
    "BIGNUM",
    "VARINT",
    "UNION",
)


@dataclass
class QueryResult:
    table: pa.Table
    columns: list[Column]
    truncated: bool
    data_version: str
    execution_time_ms: float
    total: int | None = None  # every row of the result (count=exact), past any cap

    @property
    def row_count(self) -> int:
        return self.table.num_rows


class _Job:
    """One query's life: queued -> running (cursor known) -> done; timeouts act on it."""

    def __init__(self, timeout_seconds: float, limit_seconds: float | None = None) -> None:
        self.timeout_seconds = max(0.0, timeout_seconds)
        # What the caller configured (the message); the timeout may be what is left of it.
        self.limit_seconds = timeout_seconds if limit_seconds is None else limit_seconds
        self._lock = threading.Lock()
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self.timed_out = False
        self.done = False

    def start(self, cursor: duckdb.DuckDBPyConnection | None) -> None:
        with self._lock:
            if self.timed_out:
                raise self.error()
            self._cursor = cursor

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._cursor = None

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.timed_out = True
            if self._cursor is not None:
                self._cursor.interrupt()

    def error(self) -> QueryTimeout:
        return QueryTimeout(f"the query ran longer than {self.limit_seconds:g} s and was stopped")


def _text_projection(
    relation: duckdb.DuckDBPyRelation, types: list[str]
) -> duckdb.DuckDBPyRelation:
    if not any(t.startswith(_AS_TEXT_PREFIXES) for t in types):
        return relation
    names = relation.columns
    exprs = []
    for i, (name, type_) in enumerate(zip(names, types, strict=True)):
        alias = quote_ident(name)
        ref = f"#{i + 1}"
        exprs.append(
            f"CAST({ref} AS VARCHAR) AS {alias}"
            if type_.startswith(_AS_TEXT_PREFIXES)
            else f"{ref} AS {alias}"
        )
    return relation.project(", ".join(exprs))


def _relation(
    cursor: duckdb.DuckDBPyConnection, sql: str, params: Params
) -> tuple[duckdb.DuckDBPyRelation, list[Column]]:
    relation = cursor.sql(sql, params=params) if params else cursor.sql(sql)
    if relation is None:  # the guard only lets SELECTs through; belt and braces
        raise duckdb.InvalidInputException("the statement returned no result")
    types = [str(t) for t in relation.types]
    columns = [Column(n, t) for n, t in zip(relation.columns, types, strict=True)]
    return _text_projection(relation, types), columns


# DuckDB's Arrow reader reports a failure past its first batch as pyarrow's
# OSError carrying DuckDB's message ("Out of Memory Error: ...").
_DUCKDB_MESSAGE = re.compile(r"^([A-Za-z]+(?: [A-Za-z]+)*) Error: ")
_DUCKDB_ERRORS: dict[str, type[duckdb.Error]] = {
    "Out of Memory": duckdb.OutOfMemoryException,
    "INTERRUPT": duckdb.InterruptException,
    "Invalid Input": duckdb.InvalidInputException,
    "Conversion": duckdb.ConversionException,
}


def _read_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    """The next batch of a DuckDB Arrow reader, None at the end; DuckDB's
    failures as DuckDB's exceptions (so OOM is `busy`, a bad row a 400)."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
    except OSError as exc:
        found = _DUCKDB_MESSAGE.match(str(exc))
        if found is None:
            raise
        raise _DUCKDB_ERRORS.get(found.group(1), duckdb.Error)(str(exc)) from None


def _too_large(max_bytes: int) -> ResultTooLarge:
    return ResultTooLarge(
        f"the result is larger than {max_bytes:,} bytes (MAX_RESULT_BYTES): select fewer"
        " rows or columns, or aggregate; format=ndjson or csv stream larger results"
    )


def _capped_table(
    relation: duckdb.DuckDBPyRelation,
    max_rows: int,
    max_bytes: int | None = None,
    on_heavy: Callable[[], object] | None = None,
) -> pa.Table:
    """At most `max_rows + 1` rows (one more tells that there were more), and at
    most `max_bytes` of Arrow data (ResultTooLarge past it). `on_heavy` is
    called once when the data passes LIGHT_RESULT_BYTES (admission.py).

    Read from DuckDB's streaming result, which stops the query once a cap is
    passed; `relation.limit()` would do the same but binds the query a second
    time (~0.5 ms for a small query, more for aggregates).
    """
    reader = relation.to_arrow_reader(max_rows + 1)
    try:
        batches: list[pa.RecordBatch] = []
        rows = size = 0
        while rows <= max_rows:
            batch = _read_batch(reader)
            if batch is None:
                break
            size += batch.nbytes
            if max_bytes is not None and size > max_bytes:
                raise _too_large(max_bytes)
            if on_heavy is not None and size > LIGHT_RESULT_BYTES:
                on_heavy()
                on_heavy = None
            batches.append(batch)
            rows += batch.num_rows
        return pa.Table.from_batches(batches, schema=reader.schema)
    finally:
        reader.close()


def _count(relation: duckdb.DuckDBPyRelation) -> int:
    rows = relation.aggregate("count(*)").fetchall()
    return int(rows[0][0]) if rows else 0


def _spool(
    reader: pa.RecordBatchReader, directory: Path, max_batch_bytes: int | None, max_bytes: int
) -> tuple[pa.RecordBatchReader, bool]:
    """Write every batch of `reader` to an Arrow file in `directory`; a reader
    of that file (memory-mapped: its pages are the file's, not the heap's), and
    whether it stopped at `max_bytes` with more to come. The file is unlinked
    at once (the map keeps it readable), so nothing is left behind."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, suffix=".stream.arrow")
    os.close(fd)
    try:
        size, cut = 0, False
        with pa.OSFile(name, "wb") as sink, pa.ipc.new_stream(sink, reader.schema) as writer:
            while (batch := _read_batch(reader)) is not None:
                if max_batch_bytes is not None and batch.nbytes > max_batch_bytes:
                    # One batch of a few huge values: each batch is encoded in memory.
                    raise _too_large(max_batch_bytes)
                writer.write_batch(batch)
                size += batch.nbytes
                if size > max_bytes:  # past the stream's cap: enough to say so
                    cut = True
                    break
        return pa.ipc.open_stream(pa.memory_map(name)), cut
    finally:
        os.unlink(name)


class ResultStream:
    """A query result read batch by batch (NDJSON/CSV) from its spooled file."""

    def __init__(
        self,
        reader: pa.RecordBatchReader,
        columns: list[Column],
        data_version: str,
        cut: bool = False,
    ) -> None:
        self._reader = reader
        self.columns = columns
        self.data_version = data_version
        self.cut = cut  # the spool stopped at the stream's byte cap: more rows exist
        self.reading = 0  # reads submitted to the pool and not finished
        self._close_requested = False
        self._on_close: list[Callable[[], None]] = []

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the stream is closed (e.g. release the lease)."""
        self._on_close.append(fn)

    def read_done(self) -> None:
        self.reading -= 1
        if self._close_requested and self.reading == 0:
            self._close_now()

    def next_batch(self) -> pa.Table | None:
        """Blocking; None at the end."""
        batch = _read_batch(self._reader)
        return None if batch is None else pa.Table.from_batches([batch])

    def close(self) -> None:
        """Close now, or when the read still running on a pool thread ends."""
        self._close_requested = True
        if self.reading == 0:
            self._close_now()

    def _close_now(self) -> None:
        with contextlib.suppress(Exception):
            self._reader.close()
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            fn()


class QueryExecutor:
    def __init__(
        self,
        workers: int,
        admission: AdmissionGate | None = None,
        encode_slots: int | None = None,
        oom_wait_seconds: float = 0.0,
    ) -> None:
        self.workers = workers
        self.admission = admission
        self.oom_wait_seconds = oom_wait_seconds
        # Buffered results encoded at once: the budget's light work (memory_budget.py).
        self._encodes = threading.BoundedSemaphore(encode_slots or workers)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="query")
        self._local = threading.local()
        self.active = 0  # queries submitted and not finished (for metrics/tests)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- thread side --------------------------------------------------------
    def _cursor(self, snapshot: Snapshot) -> duckdb.DuckDBPyConnection:
        local = self._local
        if getattr(local, "snapshot", None) is not snapshot:
            old = getattr(local, "cursor", None)
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close()
            local.cursor = snapshot.con.cursor()
            local.snapshot = snapshot
        cursor: duckdb.DuckDBPyConnection = local.cursor
        return cursor

    def _forget_cursor(self) -> None:
        old = getattr(self._local, "cursor", None)
        self._local.snapshot = None
        self._local.cursor = None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()

    def _out_of_memory_waits(self, job: _Job, run: Callable[[], T]) -> T:
        """`run()`, run again while DuckDB is out of memory, for up to
        `oom_wait_seconds`: its memory_limit is shared by the worker's queries,
        and one large sort holds most of a small one for a few seconds. The
        caller answers `503 busy` only when it stays full (or at the deadline)."""
        deadline = time.monotonic() + self.oom_wait_seconds
        pause = OOM_FIRST_PAUSE_SECONDS
        while True:
            try:
                return run()
            except duckdb.OutOfMemoryException:
                if job.timed_out or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, OOM_MAX_PAUSE_SECONDS)

    def _execute(
        self,
        job: _Job,
        snapshot: Snapshot,
        sql: str,
        params: Params,
        max_rows: int,
        max_bytes: int | None,
        then: Callable[[QueryResult], Any] | None,
        prepare: Callable[[], str] | None = None,
        heavy_bytes: int = 0,
        offset: int = 0,
        count: bool = False,
    ) -> Any:
        # A large result holds an admission reservation until it is encoded.
        held = contextlib.ExitStack()
        on_heavy: Callable[[], object] | None = None
        if self.admission is not None and heavy_bytes:
            gate = self.admission
            reserved = False

            def reserve() -> object:
                nonlocal reserved
                if not reserved:  # once, though DuckDB may run the query again
                    held.enter_context(gate.reserve(heavy_bytes, "a large result"))
                    reserved = True
                return None

            on_heavy = reserve
        with held:
            if prepare is not None:
                # The caller's last check (the SQL guard), in this same pool task:
                # it returns the SQL to run or raises, and then nothing runs.
                sql = prepare()
            started = time.perf_counter()
            cursor = self._cursor(snapshot)
            job.start(cursor)

            def run() -> tuple[pa.Table, list[Column], int | None]:
                relation, columns = _relation(cursor, sql, params)
                total = _count(relation) if count else None
                if offset:  # a later page (query/pagination.py)
                    relation = relation.limit(max_rows + 1, offset)
                return _capped_table(relation, max_rows, max_bytes, on_heavy), columns, total

            try:
                table, columns, total = self._out_of_memory_waits(job, run)
            except duckdb.Error:
                if job.timed_out:
                    self._forget_cursor()  # an interrupted cursor is not reused
                    raise job.error() from None
                raise
            finally:
                job.finish()
            truncated = table.num_rows > max_rows
            if truncated:
                table = table.slice(0, max_rows)
            result = QueryResult(
                table=table,
                columns=columns,
                truncated=truncated,
                data_version=snapshot.version,
                execution_time_ms=round((time.perf_counter() - started) * 1000, 3),
                total=total,
            )
            # Encoding in the same pool task saves a second thread hop per request.
            if then is None:
                return result
            with self._encodes:
                return result, then(result)

    def _open_stream(
        self,
        job: _Job,
        snapshot: Snapshot,
        sql: str,
        params: Params,
        max_rows: int,
        max_batch_bytes: int | None,
        batch_rows: int,
        spool_dir: Path,
        max_bytes: int,
    ) -> ResultStream:
        cursor = snapshot.con.cursor()  # private: closed once the result is spooled

        def run() -> tuple[pa.RecordBatchReader, bool, list[Column]]:
            relation, columns = _relation(cursor, sql, params)
            reader = relation.limit(max_rows + 1).to_arrow_reader(batch_rows)
            try:
                return *_spool(reader, spool_dir, max_batch_bytes, max_bytes), columns
            finally:
                reader.close()

        try:
            job.start(cursor)
            spooled, cut, columns = self._out_of_memory_waits(job, run)
        except duckdb.Error:
            if job.timed_out:
                raise job.error() from None
            raise
        finally:
            job.finish()
            cursor.close()
        return ResultStream(spooled, columns, snapshot.version, cut)

    # -- event-loop side ----------------------------------------------------
    async def _submit(
        self,
        job: _Job,
        fn: Callable[..., T],
        *args: Any,
        on_done: Callable[[], None] | None = None,
    ) -> T:
        """Run `fn(job, *args)` on the pool; answer by the job's deadline whatever
        the thread does. `on_done` runs on the loop once the thread has let go."""
        loop = asyncio.get_running_loop()
        timer = loop.call_later(job.timeout_seconds, job.expire)
        self.active += 1
        work = self._pool.submit(fn, job, *args)
        work.add_done_callback(lambda _: _call_soon(loop, self._finished, on_done))
        waiting = asyncio.wrap_future(work)
        waiting.add_done_callback(_retrieve)  # an abandoned failure is not an error to log
        try:
            return await asyncio.wait_for(
                asyncio.shield(waiting), job.timeout_seconds + ABANDON_GRACE_SECONDS
            )
        except TimeoutError:
            job.expire()
            work.cancel()  # still queued: it never starts
            raise job.error() from None
        except duckdb.InterruptException:
            raise job.error() from None
        finally:
            timer.cancel()

    def _finished(self, on_done: Callable[[], None] | None) -> None:
        self.active -= 1
        if on_done is not None:
            on_done()

    async def run_then(
        self,
        snapshot: Snapshot,
        sql: str,
        params: Params,
        then: Callable[[QueryResult], T],
        *,
        max_rows: int,
        max_bytes: int | None = None,
        timeout_seconds: float,
        limit_seconds: float | None = None,
        prepare: Callable[[], str] | None = None,
        heavy_bytes: int = 0,
        offset: int = 0,
        count: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> tuple[QueryResult, T]:
        """Like run(), then `then(result)` (e.g. encoding) in the same pool thread.

        `prepare()`, when given, runs first in that same task (one thread hop
        for both): it returns the SQL to run, or raises and nothing runs. A
        result past LIGHT_RESULT_BYTES reserves `heavy_bytes` (admission.py).
        `offset` skips rows (a later page); `count` also counts the whole result."""
        job = _Job(timeout_seconds, limit_seconds)
        pair: tuple[QueryResult, T] = await self._submit(
            job,
            self._execute,
            snapshot,
            sql,
            params,
            max_rows,
            max_bytes,
            then,
            prepare,
            heavy_bytes,
            offset,
            count,
            on_done=on_done,
        )
        return pair

    async def open_stream(
        self,
        snapshot: Snapshot,
        sql: str,
        params: Params,
        *,
        max_rows: int,
        max_batch_bytes: int | None = None,
        timeout_seconds: float,
        limit_seconds: float | None = None,
        batch_rows: int = 10_000,
        buffer_bytes: int = 0,
        spool_dir: Path,
        max_bytes: int,
    ) -> ResultStream:
        """Run a streamed result's query to its end, spooled to `spool_dir`
        (at most `max_rows` + 1 rows, about `max_bytes` of Arrow data); the
        caller holds the lease until it closes the stream. The stream holds
        `buffer_bytes` of the admission budget until it closes."""
        reservation = None
        if self.admission is not None and buffer_bytes:
            reservation = await self.admission.areserve(buffer_bytes, "an export")
        job = _Job(timeout_seconds, limit_seconds)
        try:
            stream = await self._submit(
                job,
                self._open_stream,
                snapshot,
                sql,
                params,
                max_rows,
                max_batch_bytes,
                batch_rows,
                spool_dir,
                max_bytes,
            )
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise
        if reservation is not None:
            stream.on_close(reservation.release)
        return stream

    async def next_batch(
        self, stream: ResultStream, *, timeout_seconds: float, limit_seconds: float | None = None
    ) -> pa.Table | None:
        """The next batch (from the spooled file) by the deadline. A read abandoned
        at the deadline keeps the file open: `stream.close()` then waits for it (on_done)."""
        job = _Job(timeout_seconds, limit_seconds)

        def read(job: _Job) -> pa.Table | None:
            job.start(None)
            try:
                return stream.next_batch()
            finally:
                job.finish()

        stream.reading += 1
        return await self._submit(job, read, on_done=stream.read_done)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (encoding, compression) on the pool, not the loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
        loop.call_soon_threadsafe(fn, *args)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
