"""`GET /query?q=` (the seed's form) and `POST /query` (JSON body).

The encoding is chosen by `format=` or the Accept header (see encodings.py);
query_response.py does caching, execution, encoding and compression.
"""

from __future__ import annotations

from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api_service.auth import Principal
from api_service.deps import ManagerDep, SettingsDep, WhitelistDep, policy_for, require_scope
from api_service.encodings import Encoding, UnsupportedFormat, negotiate_format
from api_service.errors import ApiError
from api_service.query_executor import QueryTimeout
from api_service.query_response import answer_query
from api_service.snapshots import NoSnapshot
from api_service.sql_guard import QueryRejected, cached_decision, check_query

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
    manager: ManagerDep,
    whitelist: WhitelistDep,
    settings: SettingsDep,
    encoding: Encoding,
) -> Response:
    policy = policy_for(principal, whitelist)
    if not policy.allow_ad_hoc_sql:
        raise ApiError(
            403,
            "ad_hoc_sql_not_allowed",
            "this application may only run named queries (see GET /queries)",
        )
    tables = None if "*" in policy.tables else policy.tables
    functions = policy.allowed_table_functions
    try:
        # A repeated query's decision comes from the guard's cache, inline; a new
        # one is parsed with DuckDB (~1 ms) on a thread, not on the event loop.
        guarded = cached_decision(
            sql,
            allowed_tables=tables,
            allowed_table_functions=functions,
            max_length=settings.max_sql_length,
        )
        if guarded is None:
            guarded = await run_in_threadpool(
                check_query,
                sql,
                allowed_tables=tables,
                allowed_table_functions=functions,
                max_length=settings.max_sql_length,
            )
        request.state.query_fingerprint = guarded.fingerprint
        # After auth, policy, rate limit and guard: cache, execute, encode.
        return await answer_query(request, manager, settings, guarded.sql, params, encoding)
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
    manager: ManagerDep,
    whitelist: WhitelistDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, description="One read-only SELECT statement")],
    format: Annotated[str | None, Query(description=FORMAT_DESCRIPTION)] = None,
) -> Response:
    encoding = _encoding(request, format)
    return await run_sql(request, q, None, principal, manager, whitelist, settings, encoding)


@router.post("/query")
async def query_post(
    request: Request,
    body: QueryRequest,
    principal: ReadAnalytics,
    manager: ManagerDep,
    whitelist: WhitelistDep,
    settings: SettingsDep,
) -> Response:
    encoding = _encoding(request, body.format)
    return await run_sql(
        request, body.sql, body.params, principal, manager, whitelist, settings, encoding
    )
