"""Named queries: `GET /queries` lists what the caller may run,
`POST /queries/{name}` runs one with typed, validated, bound parameters.

This is what most frontend apps should call: the SQL is the operator's, the
caller only supplies values.
"""

from __future__ import annotations

from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api_service.auth.tokens import Principal
from api_service.data.snapshots import NoSnapshot
from api_service.deps import ManagerDep, PolicyDep, SettingsDep, WhitelistDep, require_scope
from api_service.errors import ApiError
from api_service.http.responses import json_response
from api_service.query.encodings import UnsupportedFormat, negotiate_format
from api_service.query.executor import QueryTimeout
from api_service.query.named_queries import ParameterError, bind_parameters
from api_service.query.service import answer_query

router = APIRouter(tags=["named queries"])

ReadAnalytics = Annotated[Principal, Depends(require_scope("read:analytics"))]


class NamedQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameter values by name (see GET /queries)"
    )
    format: str | None = Field(
        None, max_length=32, description="Response encoding, as for POST /query (default json)"
    )


@router.get("/queries", summary="List the named queries this application may run")
async def list_queries(
    principal: ReadAnalytics, policy: PolicyDep, whitelist: WhitelistDep
) -> Response:
    queries = [
        {
            "name": name,
            "description": query.description,
            "parameters": {
                pname: spec.model_dump(exclude_none=True)
                for pname, spec in query.parameters.items()
            },
        }
        for name, query in sorted(whitelist.named_queries.items())
        if policy.may_run(name)
    ]
    return json_response({"success": True, "queries": queries})


@router.post("/queries/{name}", summary="Run a named query with parameters")
async def run_named_query(
    request: Request,
    name: Annotated[str, Path(max_length=63, description="Query name from GET /queries")],
    principal: ReadAnalytics,
    policy: PolicyDep,
    whitelist: WhitelistDep,
    manager: ManagerDep,
    settings: SettingsDep,
    body: NamedQueryRequest | None = None,
) -> Response:
    query = whitelist.named_queries.get(name)
    if query is None or not policy.may_run(name):
        # Same answer for "does not exist" and "not yours": names are not disclosed.
        raise ApiError(
            404, "unknown_query", f"no named query {name!r} for this application (GET /queries)"
        )
    request.state.named_query = name
    request.state.query_fingerprint = f"named:{name}"
    try:
        params = bind_parameters(query, body.params if body else None)
        encoding = negotiate_format(body.format if body else None, request.headers.get("accept"))
    except ParameterError as exc:
        raise ApiError(422, "invalid_parameters", str(exc)) from None
    except UnsupportedFormat as exc:
        raise ApiError(400, "unsupported_format", str(exc)) from None
    try:
        # The same pipeline as POST /query (cache, encodings, timeout, row cap).
        return await answer_query(request, manager, settings, query.sql, params or None, encoding)
    except NoSnapshot as exc:
        raise ApiError(503, "no_data", str(exc), {"Retry-After": "5"}) from None
    except QueryTimeout as exc:
        raise ApiError(400, "query_timeout", str(exc)) from None
    except duckdb.Error as exc:
        raise ApiError(400, "query_error", str(exc)) from None
