"""The OpenAPI document, shaped for client generators, and offline docs.

FastAPI's own document describes what the routes declare; the routes answer
`Response` objects (encoded from Arrow), so this module adds what a generator
needs: typed success models (`QueryResult` with its `columns`), one
`ErrorResponse` whose `code` is an enum of every documented code, every status
an operation can answer (422 in the API's own error shape), each format's
media type, `format` as an enum, stable operation ids, and one typed
operation per named query of the whitelist (`runNamedQuery_<name>`,
`getNamedQuery_<name>`), built at start-up.

`/docs` (Swagger UI) and `/redoc` load their assets from this server, from
the pinned `fastapi-offline` package: no CDN at run time.

What must always hold: every error code the API can answer is in
`ERROR_CODES`; tests generate a TypeScript client from this document.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse

from analytics_shared.whitelist import NamedQuery, QueryParameter, Whitelist
from api_service.query.encodings import FORMATS

__all__ = ["ERROR_CODES", "install_openapi"]

ASSETS = Path(fastapi_offline.__file__).parent / "static"
_ASSET_FILES = {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"}

ERROR_CODES = sorted(
    {
        # authentication and authorisation
        "unauthorized", "invalid_token", "invalid_api_key", "invalid_ticket",
        "auth_unavailable", "forbidden", "unknown_application", "insufficient_scope",
        "ad_hoc_sql_not_allowed", "rate_limited",
        # the request
        "bad_request", "invalid_request", "invalid_parameters", "invalid_cursor",
        "unsupported_format", "request_too_large", "not_found", "method_not_allowed",
        "not_acceptable", "unsupported_media_type", "http_error", "cors_refused",
        "unknown_query", "stale_cursor",
        # the SQL guard
        "empty_query", "query_too_long", "query_too_complex", "syntax_error",
        "function_not_allowed", "table_not_allowed", "unsupported", "query_rejected",
        # running it
        "query_timeout", "result_too_large", "query_error",
        # the server
        "no_data", "too_many_connections", "internal_error",
    }
)  # fmt: skip

_RESULT_OPS = {"runQuery", "runQueryGet", "runNamedQuery", "getNamedQuery"}
_STATUS_TEXT = {
    304: "Not modified: the ETag in If-None-Match is still current (no body)",
    400: "Bad request: the SQL guard's refusal, an unsupported format, a bad cursor, a timeout",
    401: "Missing or invalid credentials",
    403: "The token lacks the scope, or the application may not do this",
    404: "No such named query for this application",
    409: "stale_cursor: the data changed since this cursor was made",
    413: "The request body is too large",
    422: "Invalid parameters or request fields",
    429: "Rate limited: see Retry-After and X-RateLimit-*",
    503: "No data loaded yet, identity provider unreachable, or too many streams (Retry-After)",
}
_ERRORS_OF = {
    "result": [400, 401, 403, 422, 429, 503],
    "named": [400, 401, 403, 404, 422, 429, 503],
    "auth": [401, 403, 429, 503],
}
_HEADERS = {
    "ETag": "Identifies this answer (data version, query, format); send in If-None-Match",
    "X-Data-Version": "The snapshot version the answer was computed on",
    "X-Row-Count": "Rows in this answer (non-JSON formats)",
    "X-Truncated": "true when more rows exist (see `next` / X-Next-Cursor)",
    "X-Next-Cursor": "The next page's cursor (Arrow, Parquet)",
    "X-Total-Count": "Rows of the whole result with count=exact (Arrow, Parquet)",
    "X-Columns": "JSON list of {name, type} (non-JSON formats)",
    "X-Cache": "hit, miss or stream",
}
_TYPES = {
    "integer": {"type": "integer", "format": "int64"},
    "number": {"type": "number"},
    "string": {"type": "string"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "timestamp": {"type": "string", "format": "date-time"},
}


def _components() -> dict[str, Any]:
    ref = "#/components/schemas/"
    return {
        "ErrorResponse": {
            "type": "object",
            "required": ["success", "error"],
            "properties": {
                "success": {"type": "boolean", "const": False},
                "error": {"$ref": ref + "ErrorBody"},
            },
        },
        "ErrorBody": {
            "type": "object",
            "required": ["code", "message", "request_id"],
            "properties": {
                "code": {"$ref": ref + "ErrorCode"},
                "message": {"type": "string", "description": "One line; says what to fix"},
                "request_id": {"type": ["string", "null"]},
            },
        },
        "ErrorCode": {"type": "string", "enum": ERROR_CODES},
        "Column": {
            "type": "object",
            "required": ["name", "type"],
            "properties": {
                "name": {"type": "string"},
                "type": {"type": "string", "description": "DuckDB type, e.g. DECIMAL(12,2)"},
            },
        },
        "CellValue": {
            "description": (
                "A value as JSON: DECIMAL and integers past 2^53-1 are strings,"
                " timestamps ISO 8601, BLOB base64"
            ),
            "type": ["string", "number", "integer", "boolean", "null", "array", "object"],
        },
        "Row": {"type": "object", "additionalProperties": {"$ref": ref + "CellValue"}},
        "QueryResult": {
            "type": "object",
            "required": [
                "success",
                "data",
                "columns",
                "row_count",
                "truncated",
                "data_version",
                "execution_time_ms",
            ],
            "properties": {
                "success": {"type": "boolean", "const": True},
                "data": {
                    "type": "array",
                    "items": {"$ref": ref + "Row"},
                    "description": "Row objects (json_compact: arrays in `columns` order)",
                },
                "columns": {"type": "array", "items": {"$ref": ref + "Column"}},
                "row_count": {"type": "integer"},
                "truncated": {"type": "boolean"},
                "data_version": {"type": "string"},
                "execution_time_ms": {"type": "number"},
                "next": {
                    "type": "string",
                    "description": "Cursor of the next page (present when more rows exist)",
                },
                "total": {
                    "type": "integer",
                    "description": "Rows of the whole result (count=exact)",
                },
            },
        },
        "NamedQueryParameter": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": list(_TYPES)},
                "required": {"type": "boolean"},
                "default": {"$ref": ref + "CellValue"},
                "minimum": {"type": "number"},
                "maximum": {"type": "number"},
                "max_length": {"type": "integer"},
                "enum": {"type": "array", "items": {"$ref": ref + "CellValue"}},
                "description": {"type": "string"},
            },
        },
        "NamedQueryInfo": {
            "type": "object",
            "required": ["name", "description", "parameters"],
            "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {
                    "type": "object",
                    "additionalProperties": {"$ref": ref + "NamedQueryParameter"},
                },
            },
        },
        "NamedQueryList": {
            "type": "object",
            "required": ["success", "queries"],
            "properties": {
                "success": {"type": "boolean", "const": True},
                "queries": {"type": "array", "items": {"$ref": ref + "NamedQueryInfo"}},
            },
        },
        "EventsTicket": {
            "type": "object",
            "required": ["success", "ticket", "expires_in"],
            "properties": {
                "success": {"type": "boolean", "const": True},
                "ticket": {"type": "string"},
                "expires_in": {"type": "integer", "description": "Seconds"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "ready", "data_version"],
            "properties": {
                "status": {"type": "string"},
                "ready": {"type": "boolean"},
                "data_version": {"type": ["string", "null"]},
            },
            "additionalProperties": True,
        },
        "SchemaInfo": {
            "type": "object",
            "required": ["success", "data_version", "tables"],
            "properties": {
                "success": {"type": "boolean"},
                "data_version": {"type": "string"},
                "tables": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["columns"],
                        "properties": {
                            "row_count": {"type": "integer"},
                            "columns": {"type": "array", "items": {"$ref": ref + "Column"}},
                        },
                        "additionalProperties": True,
                    },
                },
            },
        },
    }


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _result_content() -> dict[str, Any]:
    content = _json("QueryResult")
    for encoding in FORMATS.values():
        media = encoding.media_type.split(";")[0]
        if media != "application/json":
            binary = not encoding.text
            schema = {"type": "string", "format": "binary"} if binary else {"type": "string"}
            content[media] = {"schema": schema}
    return content


def _errors(statuses: list[int]) -> dict[str, Any]:
    return {
        str(s): {"description": _STATUS_TEXT[s], "content": _json("ErrorResponse")}
        for s in statuses
    }


def _result_responses(kind: str, post: bool) -> dict[str, Any]:
    statuses = sorted({*_ERRORS_OF[kind], 409, *([413] if post else [])})
    headers = {
        name: {"description": text, "schema": {"type": "string"}} for name, text in _HEADERS.items()
    }
    return {
        "200": {
            "description": "The result, in the format asked for (format= or Accept)",
            "headers": headers,
            "content": _result_content(),
        },
        "304": {"description": _STATUS_TEXT[304]},
        **_errors(statuses),
    }


def _format_enum(schema: dict[str, Any]) -> None:
    schema.clear()
    schema.update({"type": "string", "enum": list(FORMATS), "description": "Response encoding"})


def _param_schema(spec: QueryParameter) -> dict[str, Any]:
    schema: dict[str, Any] = dict(_TYPES[spec.type])
    whole = spec.type == "integer"  # integer bounds print as integers
    for key, bound in (("minimum", spec.minimum), ("maximum", spec.maximum)):
        if bound is not None:
            schema[key] = int(bound) if whole else bound
    for key, value in (
        ("maxLength", spec.max_length),
        ("enum", spec.enum),
        ("default", spec.default),
        ("description", spec.description or None),
    ):
        if value is not None:
            schema[key] = value
    return schema


def _named_operations(name: str, query: NamedQuery, generic: dict[str, Any]) -> dict[str, Any]:
    """`POST`/`GET /queries/<name>`, parameters typed from the whitelist."""
    properties = {p: _param_schema(spec) for p, spec in query.parameters.items()}
    required = [p for p, s in query.parameters.items() if s.required and s.default is None]
    params_schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        params_schema["required"] = required
    page = {
        "cursor": {"type": "string", "description": "`next` of the previous page"},
        "page_size": {"type": "integer", "minimum": 1},
        "count": {"type": "string", "enum": ["exact"]},
    }
    body = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "params": params_schema,
            "format": {"type": "string", "enum": list(FORMATS)},
            **page,
        },
    }
    if required:
        body["required"] = ["params"]
    summary = query.description or f"Run the named query {name}"
    post = copy.deepcopy(generic["post"])
    post.update(
        operationId=f"runNamedQuery_{name}",
        summary=summary,
        tags=["named queries"],
        requestBody={"required": bool(required), "content": {"application/json": {"schema": body}}},
    )
    post["parameters"] = [p for p in post.get("parameters", []) if p["in"] != "path"]
    get = copy.deepcopy(generic["get"])
    query_params = [
        {
            "name": p,
            "in": "query",
            "required": p in required,
            "schema": schema,
            **(
                {"description": query.parameters[p].description}
                if query.parameters[p].description
                else {}
            ),
        }
        for p, schema in properties.items()
    ]
    get.update(operationId=f"getNamedQuery_{name}", summary=summary + " (cacheable GET)")
    get["parameters"] = query_params + [
        p for p in get.get("parameters", []) if p["in"] not in ("path",)
    ]
    return {"post": post, "get": get}


def _shape(schema: dict[str, Any], whitelist: Whitelist) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(_components())
    for model in ("QueryRequest", "NamedQueryRequest"):
        props = schemas.get(model, {}).get("properties", {})
        if "format" in props:
            _format_enum(props["format"])
    ids = {
        ("/health", "get"): "getHealth",
        ("/schema", "get"): "getSchema",
        ("/metrics", "get"): "getMetrics",
        ("/events", "get"): "subscribeEvents",
        ("/events/ticket", "post"): "createEventsTicket",
    }
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            op["operationId"] = ids.get((path, method), op.get("operationId"))
            for param in op.get("parameters", []):
                if param.get("name") == "format":
                    _format_enum(param["schema"])
            op_id = op["operationId"]
            if op_id in _RESULT_OPS:
                kind = "named" if "Named" in op_id else "result"
                op["responses"] = _result_responses(kind, method == "post")
            elif op_id == "listNamedQueries":
                op["responses"] = {
                    "200": {"description": "OK", "content": _json("NamedQueryList")},
                    **_errors(_ERRORS_OF["auth"]),
                }
            elif op_id == "createEventsTicket":
                op["responses"] = {
                    "200": {"description": "OK", "content": _json("EventsTicket")},
                    **_errors(_ERRORS_OF["auth"]),
                }
            elif op_id == "subscribeEvents":
                op["responses"] = {
                    "200": {
                        "description": "Server-Sent Events: `data_version` events, heartbeats",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors([400, *_ERRORS_OF["auth"]]),
                }
            elif op_id == "getSchema":
                op["responses"] = {
                    "200": {"description": "OK", "content": _json("SchemaInfo")},
                    **_errors(_ERRORS_OF["auth"]),
                }
            elif op_id == "getHealth":
                ok = {"description": "Ready", "content": _json("Health")}
                op["responses"] = {"200": ok, "503": {**ok, "description": "Starting: no data yet"}}
            elif op_id == "getMetrics":
                op["responses"] = {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                }
            else:
                # Any other route (status, admin): JSON objects, and 422 in the
                # API's own error shape, never FastAPI's untyped defaults.
                responses = op.setdefault("responses", {})
                for answer in responses.values():
                    for media in answer.get("content", {}).values():
                        if media.get("schema") == {}:
                            media["schema"] = {"type": "object", "additionalProperties": True}
                if "422" in responses:
                    responses.update(_errors([422]))
    generic = schema["paths"].get("/queries/{name}")
    if generic is not None:
        for name, query in sorted(whitelist.named_queries.items()):
            schema["paths"][f"/queries/{name}"] = _named_operations(name, query, generic)
    return schema


def install_openapi(app: FastAPI, whitelist: Whitelist) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _shape(document, whitelist)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - reference",
            redoc_js_url="/docs/assets/redoc.standalone.js",
            redoc_favicon_url="/docs/assets/favicon.png",
            with_google_fonts=False,
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in _ASSET_FILES:
            raise HTTPException(404, "no such asset")
        return FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})
