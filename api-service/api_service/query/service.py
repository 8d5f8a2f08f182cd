"""From a query the caller may run to an HTTP response: ETag and 304, the
result cache, execution on the worker pool, encoding, compression, streaming.

`QueryService` is built once per app (`create_app`) and owns the snapshots it
reads, the worker pool and the result cache. A route hands it one frozen
`PreparedQuery`; `answer()` takes one of four paths: not modified (304),
cached, buffered (run, encode, cache) or streamed (NDJSON/CSV).

Every query runs under one wall-clock deadline counted from `answer()`
(QUERY_TIMEOUT_SECONDS; STREAM_TIMEOUT_SECONDS for a whole stream) and holds
a slot of the per-user/per-app `QueryGate` (query/fairness.py) until its pool
work has ended. Cached answers are keyed per principal: one caller's hit or
miss (X-Cache, ETag, timing) tells nothing about what another caller asked.

What must always hold: call it only after authentication, the app policy, the
rate limit and the SQL guard have passed, or with the guard still to run in
`PreparedQuery.guard`: then nothing is answered from the cache, and no 304 is
sent, before the guard has passed. DuckDB's own refusals become `QueryFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
from fastapi import Request
from fastapi.responses import Response
from starlette.datastructures import State

from api_service.access.claim_types import cached_claim_types, checked_claims, learn_claim_types
from api_service.access.rewrite import (
    QueryAccess,
    bind,
    cached_rewrite,
    column_refusals,
    rewrite_and_cache,
)
from api_service.auth.signing import Signer
from api_service.data.snapshots import Snapshot, SnapshotManager
from api_service.errors import Busy, QueryFailed
from api_service.http.responses import accepted_encoding, compress
from api_service.ops.memory_budget import ENCODE_FACTOR, MemoryBudget, stream_reservation
from api_service.ops.metrics import CACHE_BYTES, CACHE_REQUESTS, QUERY_SECONDS, ROWS_RETURNED
from api_service.query import encodings
from api_service.query.admission import AdmissionGate
from api_service.query.encodings import Encoding
from api_service.query.executor import Params, QueryExecutor, QueryResult
from api_service.query.fairness import QueryGate
from api_service.query.pagination import FIRST_PAGE, Paginator, Paging
from api_service.query.result_cache import CachedResponse, ResultCache, query_key
from api_service.query.shared_slots import SharedSlots
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
    if_none_match: str | None  # the conditional header (GET and POST alike)
    # The SQL guard still to run on `sql` (its decision was not cached): it
    # returns the SQL to run or raises.
    guard: Callable[[], str] | None = None
    user: str = "-"  # the principal: query slots and cache entries are per caller
    app: str = "-"
    paging: Paging = FIRST_PAGE  # page size, count, cursor (query/pagination.py)
    # Row filters and column policies still to apply (access/rewrite.py): the
    # rewrite needs the snapshot, so it runs after the lease, after the guard.
    access: QueryAccess | None = None
    hidden_columns: frozenset[str] = frozenset()


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
        paginator: Paginator,
        budget: MemoryBudget | None = None,
        shared_slots: SharedSlots | None = None,
    ) -> None:
        self.settings = settings
        self.snapshots = snapshots
        self.executor = executor
        self.cache = cache
        self.paginator = paginator
        self.budget = budget
        self.gate = QueryGate(
            capacity=settings.query_workers,
            per_user=settings.max_concurrent_queries_per_user,
            per_app=settings.max_concurrent_queries_per_app or settings.query_workers,
            per_user_queue=settings.max_queued_queries_per_user,
            shared=shared_slots,
        )

    @classmethod
    def from_settings(
        cls,
        settings: ApiSettings,
        snapshots: SnapshotManager,
        signer: Signer,
        budget: MemoryBudget | None = None,
    ) -> QueryService:
        # Queries run on a bounded pool, never on the event loop (see executor.py);
        # large results and streams take their memory from the budget (admission.py).
        gate = (
            AdmissionGate(budget.heavy, settings.admission_wait_seconds)
            if budget is not None
            else None
        )
        executor = QueryExecutor(
            settings.query_workers,
            gate,
            budget.encode_slots if budget is not None else None,
            oom_wait_seconds=settings.admission_wait_seconds,
        )
        cache = ResultCache(settings.result_cache_bytes)
        # With Redis, a user's (and app's) query caps hold across workers.
        shared = (
            SharedSlots(
                settings.redis_url,
                prefix=settings.rate_limit_key_prefix,
                per_user=settings.max_concurrent_queries_per_user,
                per_app=settings.max_concurrent_queries_per_app,
                lease_seconds=settings.query_slot_lease_seconds,
            )
            if settings.redis_url
            else None
        )
        return cls(settings, snapshots, executor, cache, Paginator(signer), budget, shared)

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

    async def aclose(self) -> None:
        """Give back the shared query slots this worker holds (on the event loop)."""
        if self.gate.shared is not None:
            await self.gate.shared.aclose()

    def prepare(
        self,
        request: Request,
        sql: str,
        params: Params,
        encoding: Encoding,
        guard: Callable[[], str] | None = None,
        paging: Paging = FIRST_PAGE,
        access: QueryAccess | None = None,
    ) -> PreparedQuery:
        headers = request.headers
        coding = accepted_encoding(headers.get("accept-encoding")) if encoding.text else None
        conditional = headers.get("if-none-match")
        principal = getattr(request.state, "principal", None)
        user = principal.sub if principal is not None else "-"
        app = (principal.policy or principal.app or "-") if principal is not None else "-"
        return PreparedQuery(
            sql,
            params,
            encoding,
            coding,
            conditional,
            guard,
            user=user,
            app=app,
            paging=paging,
            access=access,
        )

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
        loop = asyncio.get_running_loop()
        timeout = (
            self.settings.stream_timeout_seconds
            if query.encoding.streamed
            else self.settings.query_timeout_seconds
        )
        deadline = loop.time() + timeout
        if query.guard is not None and len(query.sql) > self.settings.max_sql_length:
            query = await self._guarded(query)  # refuses it before any work on the text
        with contextlib.ExitStack() as lease:
            snap = lease.enter_context(self.snapshots.lease())
            if query.access is not None:
                query = await self._restricted(query, snap)
            if query.paging.cursor is not None:
                # The cursor is checked against the guarded (and access-rewritten,
                # claim-bound) SQL it was minted for: guard first.
                query = await self._guarded(query) if query.guard is not None else query
                binding = self.paginator.binding(query.sql, query.params, query.encoding.name)
                latest = self.snapshots.latest_version_seen
                self.paginator.check(query.paging, snap.version, binding, latest)
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
            if not query.encoding.streamed:
                hit = self._cached(snap, target, state) if query.guard is None else None
                if hit is not None:
                    return hit  # no query slot needed
            slot = await self.gate.acquire(query.user, query.app, deadline - loop.time())
            if query.encoding.streamed:
                with column_refusals(query.hidden_columns):
                    return await self._streamed(
                        query, snap, lease, target, state, deadline, lambda: self.gate.release(slot)
                    )
            CACHE_REQUESTS.labels("miss").inc()
            # The pool task owns the lease and the slot until its thread lets go
            # (an abandoned, timed-out query may outlive this request).
            owned = lease.pop_all()

            def done() -> None:
                owned.close()
                self.gate.release(slot)

            with column_refusals(query.hidden_columns):
                result, (body, coded) = await self._execute(
                    query, snap, deadline - loop.time(), done
                )
        return self._buffered(query, result, body, coded, target, state)

    async def _guarded(self, query: PreparedQuery) -> PreparedQuery:
        assert query.guard is not None
        sql = await self.executor.call(query.guard)
        return dataclasses.replace(query, sql=sql, guard=None)

    async def _restricted(self, query: PreparedQuery, snap: Snapshot) -> PreparedQuery:
        """The query with the caller's row filters and column policies applied
        (guard first: nothing is rewritten, cached or run before it passes)."""
        if query.guard is not None:
            query = await self._guarded(query)
        access = query.access
        assert access is not None
        rewritten = cached_rewrite(query.sql, access.rules, snap.manifest)
        if rewritten is None:
            rewritten = await self.executor.call(
                rewrite_and_cache, query.sql, access.rules, snap.manifest
            )
        # Each claim must be of exactly the type its filter compares it with on
        # this snapshot (learned once per version and rule): never coerced.
        typing = cached_claim_types(snap.version, rewritten.rules)
        if typing is None:
            typing = await self.executor.call(
                learn_claim_types, snap.con, snap.version, rewritten.rules
            )
        values = checked_claims(access.claims, rewritten.claims, typing)
        params = bind(rewritten, query.params, values, access.mask_keys)
        return dataclasses.replace(
            query, sql=rewritten.sql, params=params, access=None, hidden_columns=rewritten.hidden
        )

    def _variant(self, snap: Snapshot, query: PreparedQuery) -> _Variant:
        limit = self._row_limit(query)
        variant = f"{query.encoding.name}:{limit}:{query.user}{query.paging.variant()}"
        key = query_key(snap.version, query.sql, query.params, variant)
        headers = {
            "ETag": f'W/"{key}"',
            "X-Data-Version": snap.version,
            "Vary": "Accept, Accept-Encoding",
            "Cache-Control": "private, no-cache",
        }
        return _Variant(key, f"{key}:{query.content_coding or 'identity'}", headers)

    def _row_limit(self, query: PreparedQuery) -> int:
        settings = self.settings
        if query.encoding.streamed:
            return settings.stream_max_rows
        return min(query.paging.page_size or settings.max_result_rows, settings.max_result_rows)

    def _page_fields(self, query: PreparedQuery, result: QueryResult) -> dict[str, object]:
        """`next` (when more rows exist) and `total` (count=exact) of a buffered answer."""
        fields: dict[str, object] = {}
        if result.truncated:
            paginator = self.paginator
            binding = paginator.binding(query.sql, query.params, query.encoding.name)
            fields["next"] = paginator.next_cursor(
                query.paging, result.data_version, binding, result.row_count
            )
        if result.total is not None:
            fields["total"] = result.total
        return fields

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
        self, query: PreparedQuery, snap: Snapshot, timeout: float, on_done: Callable[[], None]
    ) -> tuple[QueryResult, tuple[bytes, str | None]]:
        settings = self.settings
        return await self.executor.run_then(
            snap,
            query.sql,
            query.params,
            _materialise(query, settings.compress_min_bytes, self._page_fields),
            max_rows=self._row_limit(query),
            max_bytes=settings.max_result_bytes,
            timeout_seconds=timeout,
            limit_seconds=settings.query_timeout_seconds,
            prepare=query.guard,  # a guard not yet run goes in the same pool task, first
            heavy_bytes=int(settings.max_result_bytes * ENCODE_FACTOR[query.encoding.name]),
            offset=query.paging.offset,
            count=query.paging.count,
            on_done=on_done,
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
            page = self._page_fields(query, result)
            if "next" in page:
                extra["X-Next-Cursor"] = str(page["next"])
            if "total" in page:
                extra["X-Total-Count"] = str(page["total"])
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
        deadline: float,
        release: Callable[[], None],
    ) -> Response:
        settings = self.settings
        limits = StreamLimits(
            max_rows=settings.stream_max_rows,
            max_bytes=settings.stream_max_bytes,
            max_batch_bytes=settings.max_result_bytes,
            timeout_seconds=settings.stream_timeout_seconds,
            deadline=deadline,
            idle_write_seconds=settings.stream_idle_write_seconds,
            spool_dir=self.snapshots.cache.spill_directory(snap.version),
            buffer_bytes=stream_reservation(settings.max_result_bytes),
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
            release,
        )
        state.cache = "stream"
        return response


def _materialise(
    query: PreparedQuery,
    min_compress: int,
    page_fields: Callable[[PreparedQuery, QueryResult], dict[str, object]],
) -> Callable[[QueryResult], tuple[bytes, str | None]]:
    encoding, content_coding = query.encoding, query.content_coding

    def encode(result: QueryResult) -> tuple[bytes, str | None]:
        kwargs = {"data_version": result.data_version, "truncated": result.truncated}
        if encoding.name in ("json", "json_compact"):
            body = encodings.json_body(
                result.table,
                result.columns,
                compact=encoding.name == "json_compact",
                execution_time_ms=result.execution_time_ms,
                extra=page_fields(query, result),
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
