"""`GET /query?q=` (the seed's form) and `POST /query` (JSON body).

The encoding is chosen by `format=` or the Accept header (see encodings.py);
query/service.py does caching, execution, encoding and compression; errors
become responses in http/error_handlers.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from analytics_shared.whitelist import AppPolicy
from api_service.deps import PolicyDep, QueryServiceDep, ReadAnalytics
from api_service.errors import AdHocSqlNotAllowed
from api_service.query.encodings import negotiate_format
from api_service.query.executor import Params
from api_service.query.pagination import PageFields, Paging
from api_service.query.params import validate_params
from api_service.query.service import QueryService
from api_service.query.sql_guard import cached_decision, check_query

router = APIRouter(tags=["query"])


class QueryRequest(PageFields):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, description="One read-only SELECT statement")
    params: dict[str, Any] | list[Any] | None = Field(
        None, description="Values for $name or ? placeholders (bound, never interpolated)"
    )
    format: str | None = Field(
        None,
        description=(
            "json (default), json_compact, ndjson, csv, arrow or parquet;"
            " without it the Accept header decides"
        ),
    )


FORMAT_DESCRIPTION = "json (default), json_compact, ndjson, csv, arrow, parquet"


async def run_sql(
    request: Request,
    service: QueryService,
    policy: AppPolicy,
    sql: str,
    params: Params,
    requested_format: str | None,
    paging: Paging,
) -> Response:
    encoding = negotiate_format(requested_format, request.headers.get("accept"))
    if not policy.allow_ad_hoc_sql:
        raise AdHocSqlNotAllowed("this application may only run named queries (see GET /queries)")
    validate_params(params)  # before any cache key or ETag is derived from them
    tables = None if "*" in policy.tables else policy.tables
    functions = policy.allowed_table_functions
    max_length = service.settings.max_sql_length
    limits = service.settings.guard_limits
    # A repeated query's decision comes from the guard's cache, inline.
    guarded = cached_decision(
        sql,
        allowed_tables=tables,
        allowed_table_functions=functions,
        max_length=max_length,
        limits=limits,
    )
    if guarded is not None:
        request.state.query_fingerprint = guarded.fingerprint
        # After auth, policy, rate limit and guard: cache, execute, encode.
        query = service.prepare(request, guarded.sql, params, encoding, paging=paging)
        return await service.answer(query, request.state)
    # A new text is parsed with DuckDB (~1 ms) off the event loop, in the same
    # pool task as the query (one thread hop): the guard runs first there and
    # nothing else runs if it refuses; the service serves no cache hit or 304
    # before it has passed.
    request_state = request.state

    def guard() -> str:
        checked = check_query(
            sql,
            allowed_tables=tables,
            allowed_table_functions=functions,
            max_length=max_length,
            limits=limits,
        )
        request_state.query_fingerprint = checked.fingerprint
        return checked.sql

    query = service.prepare(request, sql, params, encoding, guard=guard, paging=paging)
    return await service.answer(query, request.state)


@router.get("/query", operation_id="runQueryGet", summary="Run one SELECT (the seed's form)")
async def query_get(
    request: Request,
    principal: ReadAnalytics,
    policy: PolicyDep,
    service: QueryServiceDep,
    q: Annotated[str, Query(min_length=1, description="One read-only SELECT statement")],
    page: Annotated[PageFields, Query()],
    format: Annotated[str | None, Query(description=FORMAT_DESCRIPTION)] = None,
) -> Response:
    paging = service.paginator.paging(page.cursor, page.count, page.page_size)
    return await run_sql(request, service, policy, q, None, format, paging)


@router.post("/query", operation_id="runQuery", summary="Run one SELECT with bound parameters")
async def query_post(
    request: Request,
    body: QueryRequest,
    principal: ReadAnalytics,
    policy: PolicyDep,
    service: QueryServiceDep,
    format: Annotated[str | None, Query(description=FORMAT_DESCRIPTION)] = None,
) -> Response:
    paging = service.paginator.paging(body.cursor, body.count, body.page_size)
    requested = body.format or format
    return await run_sql(request, service, policy, body.sql, body.params, requested, paging)
