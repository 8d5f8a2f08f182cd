"""CORS for browser apps on the origins in `CORS_ORIGINS`.

Preflights allow every header the clients send (`Authorization`,
`Content-Type`, `If-None-Match`, `Last-Event-ID`, `X-Request-ID`,
`X-API-Key`); answers expose the headers clients read (ETag, the result
headers, Retry-After and the rate-limit headers). A refused preflight
answers 400 in the API's error shape (`cors_refused`) naming what was
refused, instead of Starlette's plain text; the browser only sees that the
preflight failed, a developer reading the network tab sees why.

What must always hold: a wildcard origin never comes with credentials.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api_service.http.responses import json_bytes

__all__ = ["ALLOWED_HEADERS", "EXPOSED_HEADERS", "install_cors"]

ALLOWED_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-None-Match",
    "Last-Event-ID",
    "X-Request-ID",
    "X-API-Key",
]
EXPOSED_HEADERS = [
    "ETag",
    "X-Request-ID",
    "X-Data-Version",
    "X-Columns",
    "X-Row-Count",
    "X-Truncated",
    "X-Cache",
    "X-Next-Cursor",
    "X-Total-Count",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "Content-Disposition",
]


class _ErrorShapedCORS(CORSMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code != 200:
                    response = _refusal(scope, headers, bytes(response.body).decode())
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _refusal(scope: Scope, headers: Headers, reason: str) -> Response:
    request_id = scope.get("state", {}).get("request_id")
    asked = headers.get("access-control-request-headers", "")
    message = (
        f"CORS preflight refused ({reason.removeprefix('Disallowed CORS ')}): origin"
        f" {headers['origin']!r}, method {headers['access-control-request-method']!r},"
        f" headers {asked!r}; allowed headers: {', '.join(ALLOWED_HEADERS)}"
    )
    error = {"code": "cors_refused", "message": message[:500], "request_id": request_id}
    return Response(
        json_bytes({"success": False, "error": error}),
        status_code=400,
        media_type="application/json",
    )


def install_cors(app: FastAPI, origins: list[str]) -> None:
    if not origins:
        return
    app.add_middleware(
        _ErrorShapedCORS,
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
