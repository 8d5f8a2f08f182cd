"""`GET /query?q=` (the seed's form) and `POST /query` (JSON body).

The encoding is chosen by `format=` or the Accept header (see encodings.py);
query_response.py does caching, execution, encoding and compression.
"""

from __future__ import annotations

from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api_service.auth.tokens import Principal
from api_service.data.snapshots import NoSnapshot, SnapshotManager
from api_service.deps import policy_for, require_scope
from api_service.errors import ApiError
from api_service.query.encodings import Encoding, UnsupportedFormat, negotiate_format
from api_service.query.executor import QueryTimeout
from api_service.query.service import answer_query
from api_service.query.sql_guard import QueryRejected, cached_decision, check_query
from api_service.settings import ApiSettings

router = APIRouter(tags=["query"])

ReadAnalytics = Annotated[Principal, Depends(require_scope("read:analytics"))]


class QueryRequest(BaseModel):
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


def _encoding(request: Request, requested: str | None) -> Encoding:
    try:
        return negotiate_format(requested, request.headers.get("accept"))
    except UnsupportedFormat as exc:
        raise ApiError(400, "unsupported_format", str(exc)) from None


async def run_sql(
    request: Request,
    sql: str,
    params: dict[str, Any] | list[Any] | None,
    principal: Principal,
    encoding: Encoding,
) -> Response:
    # Read from the app state directly: as dependencies they would cost FastAPI
    # three more resolutions per request, and they carry no request input.
    state = request.app.state
    settings: ApiSettings = state.settings
    manager: SnapshotManager = state.snapshots
    policy = policy_for(principal, state.whitelist)
    if not policy.allow_ad_hoc_sql:
        raise ApiError(
            403,
            "ad_hoc_sql_not_allowed",
            "this application may only run named queries (see GET /queries)",
        )
    tables = None if "*" in policy.tables else policy.tables
    functions = policy.allowed_table_functions
    max_length = settings.max_sql_length
    try:
        # A repeated query's decision comes from the guard's cache, inline.
        guarded = cached_decision(
            sql, allowed_tables=tables, allowed_table_functions=functions, max_length=max_length
        )
        if guarded is not None:
            request.state.query_fingerprint = guarded.fingerprint
            # After auth, policy, rate limit and guard: cache, execute, encode.
            return await answer_query(request, manager, settings, guarded.sql, params, encoding)
        # A new text is parsed with DuckDB (~1 ms) off the event loop, in the same
        # pool task as the query (one thread hop): the guard runs first there and
        # nothing else runs if it refuses; answer_query serves no cache hit or
        # 304 before it has passed.
        request_state = request.state

        def guard() -> str:
            checked = check_query(
                sql, allowed_tables=tables, allowed_table_functions=functions, max_length=max_length
            )
            request_state.query_fingerprint = checked.fingerprint
            return checked.sql

        return await answer_query(request, manager, settings, sql, params, encoding, guard=guard)
    except QueryRejected as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    except NoSnapshot as exc:
        raise ApiError(503, "no_data", str(exc), {"Retry-After": "5"}) from None
    except QueryTimeout as exc:
        raise ApiError(400, "query_timeout", str(exc)) from None
    except duckdb.Error as exc:
        raise ApiError(400, "query_error", str(exc).splitlines()[0]) from None


@router.get("/query")
async def query_get(
    request: Request,
    principal: ReadAnalytics,
    q: Annotated[str, Query(min_length=1, description="One read-only SELECT statement")],
    format: Annotated[str | None, Query(description=FORMAT_DESCRIPTION)] = None,
) -> Response:
    encoding = _encoding(request, format)
    return await run_sql(request, q, None, principal, encoding)


@router.post("/query")
async def query_post(
    request: Request,
    body: QueryRequest,
    principal: ReadAnalytics,
) -> Response:
    encoding = _encoding(request, body.format)
    return await run_sql(request, body.sql, body.params, principal, encoding)
