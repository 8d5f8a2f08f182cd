"""Streamed answers (NDJSON, CSV): batch by batch from the worker pool, capped.

What must always hold: the first batch is read before the response starts, so
its failures are still a proper error response; past the stream cap
(STREAM_MAX_ROWS / STREAM_MAX_BYTES) the connection is cut (`StreamTooLarge`)
so that no client mistakes a partial export for a complete one; the stream
owns the snapshot lease from the first byte and releases it when it ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pyarrow as pa
from fastapi.responses import Response, StreamingResponse

from analytics_shared.logging_config import get_logger
from api_service.data.snapshots import Snapshot
from api_service.errors import ResultTooLarge, StreamTooLarge
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
    timeout_seconds: float
    buffer_bytes: int = 0  # the stream's admission reservation (admission.py)


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
) -> Response:
    """Open the stream, read its first batch, then hand `lease` to the response body."""
    stream = await executor.open_stream(
        snap,
        sql,
        params,
        max_rows=limits.max_rows,
        max_batch_bytes=limits.max_batch_bytes,
        timeout_seconds=limits.timeout_seconds,
        buffer_bytes=limits.buffer_bytes,
    )
    try:
        # The first batch is read before answering, so that its failures (a batch
        # past MAX_RESULT_BYTES, a timeout) are still a proper error response.
        batch = await executor.next_batch(stream, timeout_seconds=limits.timeout_seconds)
    except BaseException:
        stream.close()
        raise
    owned = lease.pop_all()  # the stream owns the lease now; it releases it when done
    body = _body(executor, stream, batch, owned, encoding, content_coding, limits)
    out = {**headers, "X-Columns": columns_header(stream.columns), "X-Cache": "stream"}
    if content_coding:
        out["Content-Encoding"] = content_coding
    return StreamingResponse(body, media_type=encoding.media_type, headers=out)


async def _body(
    executor: QueryExecutor,
    stream: ResultStream,
    batch: pa.Table | None,
    lease: contextlib.ExitStack,
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
                batch = await executor.next_batch(stream, timeout_seconds=limits.timeout_seconds)
            except ResultTooLarge as exc:  # one batch of huge values
                log.warning("stream_cap_reached", rows=rows, bytes=sent, format=encoding.name)
                raise StreamTooLarge(str(exc)) from None
        if first and encoding.name == "csv":
            chunk = encode(_empty(columns), True)
            yield compressor.feed(chunk) if compressor else chunk
        if compressor:
            yield compressor.finish()
        ROWS_RETURNED.observe(rows)
    finally:
        stream.close()
        lease.close()


def _empty(columns: list[Column]) -> pa.Table:
    return pa.table({f"c{i}": pa.array([], pa.null()) for i in range(len(columns))})
