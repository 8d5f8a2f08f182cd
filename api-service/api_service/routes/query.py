"""`GET /query?q=` (the seed's form) and `POST /query` (JSON body)."""

from __future__ import annotations

from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api_service.auth import Principal
from api_service.deps import ManagerDep, SettingsDep, WhitelistDep, policy_for, require_scope
from api_service.errors import ApiError
from api_service.query_executor import QueryResult, QueryTimeout, execute
from api_service.responses import json_response
from api_service.snapshots import NoSnapshot
from api_service.sql_guard import QueryRejected, check_query

router = APIRouter(tags=["query"])

ReadAnalytics = Annotated[Principal, Depends(require_scope("read:analytics"))]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, description="One read-only SELECT statement")
    params: dict[str, Any] | list[Any] | None = Field(
        None, description="Values for $name or ? placeholders (bound, never interpolated)"
    )
    format: str = Field("json", description="Response encoding (json)")


def _json_response(result: QueryResult) -> Response:
    names = [c["name"] for c in result.columns]
    body = {
        "success": True,
        "data": [dict(zip(names, row, strict=True)) for row in result.rows],
        "columns": result.columns,
        "row_count": len(result.rows),
        "truncated": result.truncated,
        "data_version": result.data_version,
        "execution_time_ms": result.execution_time_ms,
    }
    return json_response(body, headers={"X-Data-Version": result.data_version})


async def run_sql(
    request: Request,
    sql: str,
    params: dict[str, Any] | list[Any] | None,
    principal: Principal,
    manager: ManagerDep,
    whitelist: WhitelistDep,
    settings: SettingsDep,
) -> Response:
    policy = policy_for(principal, whitelist)
    if not policy.allow_ad_hoc_sql:
        raise ApiError(
            403,
            "ad_hoc_sql_not_allowed",
            "this application may only run named queries (see GET /queries)",
        )
    try:
        guarded = check_query(
            sql,
            allowed_tables={t.lower() for t in policy.tables} if "*" not in policy.tables else None,
            allowed_table_functions=set(policy.allowed_table_functions),
            max_length=settings.max_sql_length,
        )
        with manager.lease() as snap:
            result = await run_in_threadpool(
                execute,
                snap,
                guarded.sql,
                params,
                max_rows=settings.max_result_rows,
                timeout_seconds=settings.query_timeout_seconds,
            )
    except QueryRejected as exc:
        raise ApiError(400, exc.code, str(exc)) from None
    except NoSnapshot as exc:
        raise ApiError(503, "no_data", str(exc), {"Retry-After": "5"}) from None
    except QueryTimeout as exc:
        raise ApiError(400, "query_timeout", str(exc)) from None
    except duckdb.Error as exc:
        raise ApiError(400, "query_error", str(exc).splitlines()[0]) from None
    request.state.rows = len(result.rows)
    return _json_response(result)


@router.get("/query")
async def query_get(
    request: Request,
    principal: ReadAnalytics,
    manager: ManagerDep,
    whitelist: WhitelistDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, description="One read-only SELECT statement")],
) -> Response:
    return await run_sql(request, q, None, principal, manager, whitelist, settings)


@router.post("/query")
async def query_post(
    request: Request,
    body: QueryRequest,
    principal: ReadAnalytics,
    manager: ManagerDep,
    whitelist: WhitelistDep,
    settings: SettingsDep,
) -> Response:
    if body.format != "json":
        raise ApiError(400, "unsupported_format", f"format {body.format!r} is not supported")
    return await run_sql(request, body.sql, body.params, principal, manager, whitelist, settings)
