"""Named queries: `GET /queries` lists what the caller may run,
`POST /queries/{name}` runs one with typed, validated, bound parameters.

This is what most frontend apps should call: the SQL is the operator's, the
caller only supplies values.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api_service.deps import AccessDep, PolicyDep, QueryServiceDep, ReadAnalytics, WhitelistDep
from api_service.errors import UnknownQuery
from api_service.http.responses import json_response
from api_service.query.encodings import negotiate_format
from api_service.query.named_queries import bind_parameters

router = APIRouter(tags=["named queries"])


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
    service: QueryServiceDep,
    access: AccessDep,
    body: NamedQueryRequest | None = None,
) -> Response:
    query = whitelist.named_queries.get(name)
    if query is None or not policy.may_run(name):
        # Same answer for "does not exist" and "not yours": names are not disclosed.
        raise UnknownQuery(f"no named query {name!r} for this application (GET /queries)")
    request.state.named_query = name
    request.state.query_fingerprint = f"named:{name}"
    params = bind_parameters(query, body.params if body else None, principal.claims)
    encoding = negotiate_format(body.format if body else None, request.headers.get("accept"))
    # The same pipeline as POST /query (cache, encodings, timeout, row cap).
    # Row filters and column policies apply to the operator's SQL too.
    prepared = service.prepare(request, query.sql, params or None, encoding, access=access)
    return await service.answer(prepared, request.state)
