"""From a guarded query to an HTTP response: ETag and 304, the result cache,
execution on the worker pool, encoding, compression, streaming.

Call it only after authentication, the app policy, the rate limit and the
SQL guard have passed: everything here assumes the caller may run `sql`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pyarrow as pa
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from analytics_shared.logging_config import get_logger
from api_service.data.snapshots import Snapshot, SnapshotManager
from api_service.errors import ApiError
from api_service.http.responses import StreamCompressor, accepted_encoding, compress
from api_service.ops.metrics import CACHE_BYTES, CACHE_REQUESTS, QUERY_SECONDS, ROWS_RETURNED
from api_service.query import encodings
from api_service.query.encodings import Column, Encoding
from api_service.query.executor import QueryExecutor, QueryResult, ResultTooLarge
from api_service.query.result_cache import CachedResponse, ResultCache, query_key
from api_service.settings import ApiSettings

__all__ = ["StreamTooLarge", "answer_query"]

log = get_logger(__name__)

Params = dict[str, Any] | list[Any] | None


class StreamTooLarge(RuntimeError):
    """A streamed result passed its cap: the connection is cut so that no
    client mistakes a partial export for a complete one."""


def _columns_header(columns: list[Column]) -> str:
    # ASCII-only JSON, so any column name survives as an HTTP header value.
    return (
        orjson.dumps([c.as_dict() for c in columns])
        .decode()
        .encode("ascii", "backslashreplace")
        .decode()
    )


def _materialise(
    encoding: Encoding, content_coding: str | None, min_compress: int
) -> Callable[[QueryResult], tuple[bytes, str | None]]:
    def encode(result: QueryResult) -> tuple[bytes, str | None]:
        kwargs = {"data_version": result.data_version, "truncated": result.truncated}
        if encoding.name in ("json", "json_compact"):
            body = encodings.json_body(
                result.table,
                result.columns,
                compact=encoding.name == "json_compact",
                execution_time_ms=result.execution_time_ms,
                **kwargs,  # type: ignore[arg-type]
            )
        elif encoding.name == "arrow":
            body = encodings.arrow_ipc_bytes(result.table, result.columns, **kwargs)  # type: ignore[arg-type]
        else:
            body = encodings.parquet_bytes(result.table, result.columns, **kwargs)  # type: ignore[arg-type]
        if content_coding and len(body) >= min_compress:
            return compress(body, content_coding), content_coding
        return body, None

    return encode


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


async def answer_query(
    request: Request,
    manager: SnapshotManager,
    settings: ApiSettings,
    sql: str,
    params: Params,
    encoding: Encoding,
    guard: Callable[[], str] | None = None,
) -> Response:
    """`guard`, when given, is the SQL guard still to run on `sql` (its decision
    was not cached): it returns the SQL to run or raises. Nothing is answered
    from the cache, and no 304 is sent, before it has passed."""
    executor: QueryExecutor = request.app.state.executor
    cache: ResultCache = request.app.state.result_cache
    content_coding = (
        accepted_encoding(request.headers.get("accept-encoding")) if encoding.text else None
    )
    if guard is not None and len(sql) > settings.max_sql_length:
        sql = await executor.call(guard)  # refuses it before any work on the text
        guard = None
    with contextlib.ExitStack() as stack:
        snap = stack.enter_context(manager.lease())
        limit = settings.stream_max_rows if encoding.streamed else settings.max_result_rows
        key = query_key(snap.version, sql, params, f"{encoding.name}:{limit}")
        headers = {
            "ETag": f'W/"{key}"',
            "X-Data-Version": snap.version,
            "Vary": "Accept, Accept-Encoding",
            "Cache-Control": "private, no-cache",
        }
        variant = f"{key}:{content_coding or 'identity'}"
        not_modified = request.method == "GET" and _etag_matches(
            request.headers.get("if-none-match"), headers["ETag"]
        )
        if guard is not None and (
            encoding.streamed or not_modified or cache.get(snap.version, variant) is not None
        ):
            # Something may be answered without running the query: guard first.
            sql = await executor.call(guard)
            guard = None
        if not_modified:
            CACHE_REQUESTS.labels("not_modified").inc()
            request.state.cache = "not_modified"
            return Response(status_code=304, headers=headers)
        if encoding.streamed:
            return await _stream(
                request,
                executor,
                snap,
                stack,
                sql,
                params,
                encoding,
                content_coding,
                settings,
                headers,
            )
        hit = cache.get(snap.version, variant) if guard is None else None
        if hit is not None:
            CACHE_REQUESTS.labels("hit").inc()
            request.state.cache = "hit"
            return Response(
                hit.body,
                media_type=hit.media_type,
                headers={**headers, **hit.headers, "X-Cache": "hit"},
            )
        CACHE_REQUESTS.labels("miss").inc()
        try:
            result, (body, coded) = await executor.run_then(
                snap,
                sql,
                params,
                _materialise(encoding, content_coding, settings.compress_min_bytes),
                max_rows=settings.max_result_rows,
                max_bytes=settings.max_result_bytes,
                timeout_seconds=settings.query_timeout_seconds,
                prepare=guard,  # a guard not yet run goes in the same pool task, first
            )
        except ResultTooLarge as exc:
            raise ApiError(400, "result_too_large", str(exc)) from None
    QUERY_SECONDS.observe(result.execution_time_ms / 1000)
    ROWS_RETURNED.observe(result.row_count)
    request.state.rows = result.row_count
    request.state.cache = "miss"
    extra = {"X-Row-Count": str(result.row_count), "X-Truncated": str(result.truncated).lower()}
    if encoding.name not in ("json", "json_compact"):
        extra["X-Columns"] = _columns_header(result.columns)
    if coded:
        extra["Content-Encoding"] = coded
    if cache.enabled:
        cache.put(result.data_version, variant, CachedResponse(body, encoding.media_type, extra))
        CACHE_BYTES.set(cache.bytes)
    return Response(
        body, media_type=encoding.media_type, headers={**headers, **extra, "X-Cache": "miss"}
    )


async def _stream(
    request: Request,
    executor: QueryExecutor,
    snap: Snapshot,
    stack: contextlib.ExitStack,
    sql: str,
    params: Params,
    encoding: Encoding,
    content_coding: str | None,
    settings: ApiSettings,
    headers: dict[str, str],
) -> Response:
    max_rows, max_bytes = settings.stream_max_rows, settings.stream_max_bytes
    timeout = settings.query_timeout_seconds
    stream = await executor.open_stream(
        snap,
        sql,
        params,
        max_rows=max_rows,
        max_batch_bytes=settings.max_result_bytes,
        timeout_seconds=timeout,
    )
    columns = stream.columns
    try:
        # The first batch is read before answering, so that its failures (a batch
        # past MAX_RESULT_BYTES, a timeout) are still a proper error response.
        batch = await executor.next_batch(stream, timeout_seconds=timeout)
    except ResultTooLarge as exc:
        stream.close()
        raise ApiError(400, "result_too_large", str(exc)) from None
    except BaseException:
        stream.close()
        raise
    lease = stack.pop_all()  # the stream owns the lease now; it releases it when done
    request.state.cache = "stream"

    def encode(batch: pa.Table, first: bool) -> bytes:
        if encoding.name == "csv":
            return encodings.csv_batch(batch, columns, header=first)
        return encodings.ndjson_batch(batch, columns)

    async def body(batch: pa.Table | None) -> AsyncIterator[bytes]:
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
                    batch = await executor.next_batch(stream, timeout_seconds=timeout)
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

    out = {**headers, "X-Columns": _columns_header(columns), "X-Cache": "stream"}
    if content_coding:
        out["Content-Encoding"] = content_coding
    return StreamingResponse(body(batch), media_type=encoding.media_type, headers=out)


def _empty(columns: list[Column]) -> pa.Table:
    return pa.table({f"c{i}": pa.array([], pa.null()) for i in range(len(columns))})
