"""Streamed answers (NDJSON, CSV): batch by batch from the worker pool, capped.

What must always hold: the query has run to its end (spooled to local disk,
query/executor.py) before the response starts, so its failures (DuckDB out of
memory: 503 busy; a bad value in a late row, a batch past MAX_RESULT_BYTES,
the deadline) are still a proper error response; past the stream cap
(STREAM_MAX_ROWS / STREAM_MAX_BYTES) the connection is cut (`StreamTooLarge`)
so that no client mistakes a partial export for a complete one; the stream
owns the snapshot lease (and its query slot) from the first byte and releases
them when it ends. A stream ends by its overall deadline (STREAM_TIMEOUT_SECONDS
from the request's start, not per batch), and a client that reads nothing for
STREAM_IDLE_WRITE_SECONDS loses the connection: a slow reader cannot hold a
cursor or an old snapshot's files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Send

from analytics_shared.logging_config import get_logger
from api_service.data.snapshots import Snapshot
from api_service.errors import QueryTimeout, StreamStalled, StreamTooLarge
from api_service.http.responses import StreamCompressor
from api_service.ops.metrics import ROWS_RETURNED
from api_service.query import encodings
from api_service.query.encodings import Column, Encoding
from api_service.query.executor import Params, QueryExecutor, ResultStream

__all__ = ["StreamLimits", "columns_header", "stream_response"]

log = get_logger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    max_rows: int
    max_bytes: int
    max_batch_bytes: int
    timeout_seconds: float  # the whole stream's (STREAM_TIMEOUT_SECONDS), for messages
    deadline: float  # loop time by which the whole stream ends
    idle_write_seconds: float
    spool_dir: Path  # where the query's result is spooled before the answer starts
    buffer_bytes: int = 0  # the stream's admission reservation (admission.py)

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


class _IdleBoundedStreamingResponse(StreamingResponse):
    """Each write must complete within `idle_write_seconds` (the client reads)."""

    def __init__(self, *args: object, idle_write_seconds: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.idle_write_seconds = idle_write_seconds

    async def stream_response(self, send: Send) -> None:
        async def bounded(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.idle_write_seconds)
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
                log.warning("stream_stalled", idle_write_seconds=self.idle_write_seconds)
                raise StreamStalled(
                    f"the client read nothing for {self.idle_write_seconds:g} s"
                ) from None

        await super().stream_response(bounded)


def columns_header(columns: list[Column]) -> str:
    # ASCII-only JSON, so any column name survives as an HTTP header value.
    return (
        orjson.dumps([c.as_dict() for c in columns])
        .decode()
        .encode("ascii", "backslashreplace")
        .decode()
    )


async def stream_response(
    executor: QueryExecutor,
    snap: Snapshot,
    lease: contextlib.ExitStack,
    sql: str,
    params: Params,
    encoding: Encoding,
    content_coding: str | None,
    limits: StreamLimits,
    headers: dict[str, str],
    release: Callable[[], None],
) -> Response:
    """Open the stream, read its first batch, then hand `lease` to the response body.

    `release` (the query slot) runs once the stream's cursor is closed."""
    try:
        stream = await executor.open_stream(
            snap,
            sql,
            params,
            max_rows=limits.max_rows,
            max_batch_bytes=limits.max_batch_bytes,
            timeout_seconds=limits.remaining(),
            limit_seconds=limits.timeout_seconds,
            buffer_bytes=limits.buffer_bytes,
            spool_dir=limits.spool_dir,
            max_bytes=limits.max_bytes,
        )
    except BaseException:
        release()
        raise
    owned = lease.pop_all()  # the stream owns the lease now; it releases it when done
    stream.on_close(owned.close)
    stream.on_close(release)
    try:
        batch = await _next(executor, stream, limits)
    except BaseException:
        stream.close()
        raise
    body = _body(executor, stream, batch, encoding, content_coding, limits)
    out = {**headers, "X-Columns": columns_header(stream.columns), "X-Cache": "stream"}
    if content_coding:
        out["Content-Encoding"] = content_coding
    return _IdleBoundedStreamingResponse(
        body,
        media_type=encoding.media_type,
        headers=out,
        idle_write_seconds=limits.idle_write_seconds,
    )


async def _next(
    executor: QueryExecutor, stream: ResultStream, limits: StreamLimits
) -> pa.Table | None:
    remaining = limits.remaining()
    if remaining <= 0:
        raise QueryTimeout(
            f"the stream ran longer than {limits.timeout_seconds:g} s and was stopped"
        )
    return await executor.next_batch(
        stream, timeout_seconds=remaining, limit_seconds=limits.timeout_seconds
    )


async def _body(
    executor: QueryExecutor,
    stream: ResultStream,
    batch: pa.Table | None,
    encoding: Encoding,
    content_coding: str | None,
    limits: StreamLimits,
) -> AsyncIterator[bytes]:
    columns = stream.columns
    max_rows, max_bytes = limits.max_rows, limits.max_bytes

    def encode(batch: pa.Table, first: bool) -> bytes:
        if encoding.name == "csv":
            return encodings.csv_batch(batch, columns, header=first)
        return encodings.ndjson_batch(batch, columns)

    compressor = StreamCompressor(content_coding) if content_coding else None
    rows = sent = 0
    first = True
    try:
        while batch is not None:
            rows += batch.num_rows
            chunk = b"" if rows > max_rows else await executor.call(encode, batch, first)
            first = False
            sent += len(chunk)
            if rows > max_rows or sent > max_bytes:
                log.warning("stream_cap_reached", rows=rows, bytes=sent, format=encoding.name)
                raise StreamTooLarge(
                    f"the result passed the stream cap ({max_rows} rows, {max_bytes} bytes)"
                )
            yield compressor.feed(chunk) if compressor else chunk
            try:
                batch = await _next(executor, stream, limits)
            except QueryTimeout:  # the stream's overall deadline: the connection is cut
                log.warning("stream_deadline_reached", rows=rows, bytes=sent, format=encoding.name)
                raise
        if stream.cut:  # the spool stopped at the byte cap: there is more
            log.warning("stream_cap_reached", rows=rows, bytes=sent, format=encoding.name)
            raise StreamTooLarge(f"the result passed the stream cap ({max_bytes} bytes)")
        if first and encoding.name == "csv":
            chunk = encode(_empty(columns), True)
            yield compressor.feed(chunk) if compressor else chunk
        if compressor:
            yield compressor.finish()
        ROWS_RETURNED.observe(rows)
    finally:
        stream.close()  # then the lease and the slot (stream.on_close)


def _empty(columns: list[Column]) -> pa.Table:
    return pa.table({f"c{i}": pa.array([], pa.null()) for i in range(len(columns))})
