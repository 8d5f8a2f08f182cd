"""Named queries: `GET /queries` lists what the caller may run,
`POST /queries/{name}` runs one with typed, validated, bound parameters, and
`GET /queries/{name}?param=...` does the same in a cacheable form (ETag,
`Cache-Control: private, no-cache`, 304 on `If-None-Match`; POST honours
`If-None-Match` too). `format`, `cursor`, `page_size` and `count` are reserved
query parameter names (named_queries.py refuses them as parameter names).

This is what most frontend apps should call: the SQL is the operator's, the
caller only supplies values.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from analytics_shared.whitelist import AppPolicy, NamedQuery, Whitelist
from api_service.deps import PolicyDep, QueryServiceDep, ReadAnalytics, WhitelistDep
from api_service.errors import UnknownQuery
from api_service.http.responses import json_response
from api_service.query.encodings import negotiate_format
from api_service.query.named_queries import bind_parameters, parse_query_string
from api_service.query.pagination import PageFields, Paging
from api_service.query.service import QueryService

router = APIRouter(tags=["named queries"])


class NamedQueryRequest(PageFields):
    model_config = ConfigDict(extra="forbid")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameter values by name (see GET /queries)"
    )
    format: str | None = Field(
        None, max_length=32, description="Response encoding, as for POST /query (default json)"
    )


NAME = Annotated[str, Path(max_length=63, description="Query name from GET /queries")]
FORMAT = Annotated[str | None, Query(max_length=32, description="Response encoding")]


def _named(whitelist: Whitelist, policy: AppPolicy, name: str) -> NamedQuery:
    query = whitelist.named_queries.get(name)
    if query is None or not policy.may_run(name):
        # Same answer for "does not exist" and "not yours": names are not disclosed.
        raise UnknownQuery(f"no named query {name!r} for this application (GET /queries)")
    return query


async def _run(
    request: Request,
    service: QueryService,
    name: str,
    query: NamedQuery,
    values: dict[str, Any] | None,
    requested_format: str | None,
    paging: Paging,
) -> Response:
    request.state.named_query = name
    request.state.query_fingerprint = f"named:{name}"
    params = bind_parameters(query, values)
    encoding = negotiate_format(requested_format, request.headers.get("accept"))
    # The same pipeline as POST /query (cache, encodings, timeout, row cap).
    prepared = service.prepare(request, query.sql, params or None, encoding, paging=paging)
    return await service.answer(prepared, request.state)


@router.get(
    "/queries", operation_id="listNamedQueries", summary="The named queries this app may run"
)
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


@router.post(
    "/queries/{name}", operation_id="runNamedQuery", summary="Run a named query with parameters"
)
async def run_named_query(
    request: Request,
    name: NAME,
    principal: ReadAnalytics,
    policy: PolicyDep,
    whitelist: WhitelistDep,
    service: QueryServiceDep,
    format: FORMAT = None,
    body: NamedQueryRequest | None = None,
) -> Response:
    query = _named(whitelist, policy, name)
    if body is None:
        paging = service.paginator.paging(None)
        return await _run(request, service, name, query, None, format, paging)
    paging = service.paginator.paging(body.cursor, body.count, body.page_size)
    return await _run(request, service, name, query, body.params, body.format or format, paging)


@router.get(
    "/queries/{name}",
    operation_id="getNamedQuery",
    summary="Run a named query, parameters in the query string (cacheable)",
)
async def get_named_query(
    request: Request,
    name: NAME,
    principal: ReadAnalytics,
    policy: PolicyDep,
    whitelist: WhitelistDep,
    service: QueryServiceDep,
    page: Annotated[PageFields, Query()],
    format: FORMAT = None,
) -> Response:
    query = _named(whitelist, policy, name)
    values = parse_query_string(query, request.query_params.multi_items())
    paging = service.paginator.paging(page.cursor, page.count, page.page_size)
    return await _run(request, service, name, query, values, format, paging)
