"""From a query the caller may run to an HTTP response: ETag and 304, the
result cache, execution on the worker pool, encoding, compression, streaming.

`QueryService` is built once per app (`create_app`) and owns the snapshots it
reads, the worker pool and the result cache. A route hands it one frozen
`PreparedQuery`; `answer()` takes one of four paths: not modified (304),
cached, buffered (run, encode, cache) or streamed (NDJSON/CSV).

What must always hold: call it only after authentication, the app policy, the
rate limit and the SQL guard have passed, or with the guard still to run in
`PreparedQuery.guard`: then nothing is answered from the cache, and no 304 is
sent, before the guard has passed. DuckDB's own refusals become `QueryFailed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import State

from api_service.data.snapshots import Snapshot, SnapshotManager
from api_service.errors import Busy, QueryFailed
from api_service.http.responses import accepted_encoding, compress
from api_service.ops.memory_budget import ENCODE_FACTOR, STREAM_FACTOR, MemoryBudget
from api_service.ops.metrics import CACHE_BYTES, CACHE_REQUESTS, QUERY_SECONDS, ROWS_RETURNED
from api_service.query import encodings
from api_service.query.admission import AdmissionGate
from api_service.query.encodings import Encoding
from api_service.query.executor import Params, QueryExecutor, QueryResult
from api_service.query.result_cache import CachedResponse, ResultCache, query_key
from api_service.query.streaming import StreamLimits, columns_header, stream_response
from api_service.settings import ApiSettings

__all__ = ["PreparedQuery", "QueryService"]


@dataclass(frozen=True)
class PreparedQuery:
    """Everything about one query that does not depend on the snapshot."""

    sql: str
    params: Params
    encoding: Encoding
    content_coding: str | None  # br/gzip for text encodings the client accepts
    if_none_match: str | None  # a GET's conditional header (None for POST)
    # The SQL guard still to run on `sql` (its decision was not cached): it
    # returns the SQL to run or raises.
    guard: Callable[[], str] | None = None


@dataclass(frozen=True)
class _Variant:
    """The answer's identity on one snapshot version."""

    key: str
    variant: str  # key plus content coding: what the cache stores
    headers: dict[str, str]


class QueryService:
    def __init__(
        self,
        settings: ApiSettings,
        snapshots: SnapshotManager,
        executor: QueryExecutor,
        cache: ResultCache,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.executor = executor
        self.cache = cache
        self.budget = budget

    @classmethod
    def from_settings(
        cls, settings: ApiSettings, snapshots: SnapshotManager, budget: MemoryBudget | None = None
    ) -> QueryService:
        # Queries run on a bounded pool, never on the event loop (see executor.py);
        # large results and streams take their memory from the budget (admission.py).
        gate = (
            AdmissionGate(budget.heavy, settings.admission_wait_seconds)
            if budget is not None
            else None
        )
        executor = QueryExecutor(settings.query_workers, gate)
        cache = ResultCache(settings.result_cache_bytes)
        return cls(settings, snapshots, executor, cache, budget)

    def memory_status(self) -> dict[str, object] | None:
        """The worker's budget and what of it is in use (for /health and /metrics)."""
        if self.budget is None:
            return None
        gate = self.executor.admission
        return {
            **self.budget.as_dict(),
            "heavy_reserved": gate.reserved if gate else 0,
            "busy_refusals_total": gate.refused if gate else 0,
            "cache_bytes_used": self.cache.bytes,
        }

    def close(self) -> None:
        self.executor.shutdown()

    def prepare(
        self,
        request: Request,
        sql: str,
        params: Params,
        encoding: Encoding,
        guard: Callable[[], str] | None = None,
    ) -> PreparedQuery:
        headers = request.headers
        coding = accepted_encoding(headers.get("accept-encoding")) if encoding.text else None
        conditional = headers.get("if-none-match") if request.method == "GET" else None
        return PreparedQuery(sql, params, encoding, coding, conditional, guard)

    async def answer(self, query: PreparedQuery, state: State) -> Response:
        """`state` is the request's: the request log reads `cache` and `rows` from it."""
        try:
            return await self._answer(query, state)
        except duckdb.OutOfMemoryException:
            # Concurrent queries hold DuckDB's memory_limit: retry shortly.
            raise Busy("the worker's query memory is in use; try again shortly") from None
        except duckdb.Error as exc:
            raise QueryFailed(str(exc)) from None

    async def _answer(self, query: PreparedQuery, state: State) -> Response:
        if query.guard is not None and len(query.sql) > self.settings.max_sql_length:
            query = await self._guarded(query)  # refuses it before any work on the text
        with contextlib.ExitStack() as lease:
            snap = lease.enter_context(self.snapshots.lease())
            target = self._variant(snap, query)
            not_modified = _etag_matches(query.if_none_match, target.headers["ETag"])
            if query.guard is not None and (
                query.encoding.streamed
                or not_modified
                or self.cache.get(snap.version, target.variant) is not None
            ):
                # Something may be answered without running the query: guard first.
                query = await self._guarded(query)
            if not_modified:
                return self._not_modified(target, state)
            if query.encoding.streamed:
                return await self._streamed(query, snap, lease, target, state)
            hit = self._cached(snap, target, state) if query.guard is None else None
            if hit is not None:
                return hit
            CACHE_REQUESTS.labels("miss").inc()
            result, (body, coded) = await self._execute(query, snap)
        return self._buffered(query, result, body, coded, target, state)

    async def _guarded(self, query: PreparedQuery) -> PreparedQuery:
        assert query.guard is not None
        sql = await self.executor.call(query.guard)
        return dataclasses.replace(query, sql=sql, guard=None)

    def _variant(self, snap: Snapshot, query: PreparedQuery) -> _Variant:
        settings = self.settings
        limit = settings.stream_max_rows if query.encoding.streamed else settings.max_result_rows
        key = query_key(snap.version, query.sql, query.params, f"{query.encoding.name}:{limit}")
        headers = {
            "ETag": f'W/"{key}"',
            "X-Data-Version": snap.version,
            "Vary": "Accept, Accept-Encoding",
            "Cache-Control": "private, no-cache",
        }
        return _Variant(key, f"{key}:{query.content_coding or 'identity'}", headers)

    # -- the four paths -----------------------------------------------------
    def _not_modified(self, target: _Variant, state: State) -> Response:
        CACHE_REQUESTS.labels("not_modified").inc()
        state.cache = "not_modified"
        return Response(status_code=304, headers=target.headers)

    def _cached(self, snap: Snapshot, target: _Variant, state: State) -> Response | None:
        hit = self.cache.get(snap.version, target.variant)
        if hit is None:
            return None
        CACHE_REQUESTS.labels("hit").inc()
        state.cache = "hit"
        return Response(
            hit.body,
            media_type=hit.media_type,
            headers={**target.headers, **hit.headers, "X-Cache": "hit"},
        )

    async def _execute(
        self, query: PreparedQuery, snap: Snapshot
    ) -> tuple[QueryResult, tuple[bytes, str | None]]:
        settings = self.settings
        return await self.executor.run_then(
            snap,
            query.sql,
            query.params,
            _materialise(query.encoding, query.content_coding, settings.compress_min_bytes),
            max_rows=settings.max_result_rows,
            max_bytes=settings.max_result_bytes,
            timeout_seconds=settings.query_timeout_seconds,
            prepare=query.guard,  # a guard not yet run goes in the same pool task, first
            heavy_bytes=int(settings.max_result_bytes * ENCODE_FACTOR[query.encoding.name]),
        )

    def _buffered(
        self,
        query: PreparedQuery,
        result: QueryResult,
        body: bytes,
        coded: str | None,
        target: _Variant,
        state: State,
    ) -> Response:
        QUERY_SECONDS.observe(result.execution_time_ms / 1000)
        ROWS_RETURNED.observe(result.row_count)
        state.rows = result.row_count
        state.cache = "miss"
        encoding = query.encoding
        extra = {"X-Row-Count": str(result.row_count), "X-Truncated": str(result.truncated).lower()}
        if encoding.name not in ("json", "json_compact"):
            extra["X-Columns"] = columns_header(result.columns)
        if coded:
            extra["Content-Encoding"] = coded
        if self.cache.enabled:
            cached = CachedResponse(body, encoding.media_type, extra)
            self.cache.put(result.data_version, target.variant, cached)
            CACHE_BYTES.set(self.cache.bytes)
        return Response(
            body,
            media_type=encoding.media_type,
            headers={**target.headers, **extra, "X-Cache": "miss"},
        )

    async def _streamed(
        self,
        query: PreparedQuery,
        snap: Snapshot,
        lease: contextlib.ExitStack,
        target: _Variant,
        state: State,
    ) -> Response:
        settings = self.settings
        limits = StreamLimits(
            max_rows=settings.stream_max_rows,
            max_bytes=settings.stream_max_bytes,
            max_batch_bytes=settings.max_result_bytes,
            timeout_seconds=settings.query_timeout_seconds,
            buffer_bytes=int(settings.max_result_bytes * STREAM_FACTOR),
        )
        response = await stream_response(
            self.executor,
            snap,
            lease,
            query.sql,
            query.params,
            query.encoding,
            query.content_coding,
            limits,
            target.headers,
        )
        state.cache = "stream"
        return response


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
