"""One error shape for every failure:
`{"success": false, "error": {"code", "message", "request_id"}}`.

The only place errors become responses: an `ApiError` (api_service/errors.py)
answers its own status, code, message and headers; Starlette's HTTP errors and
request validation keep their codes; anything else is a logged 500. Messages
are one line, bounded, with server paths replaced (`safe_message`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from analytics_shared.logging_config import get_logger
from api_service.errors import ApiError
from api_service.http.responses import json_response

__all__ = ["error_response", "install_error_handlers", "safe_message"]

log = get_logger(__name__)

# Absolute file paths (two or more segments) never leave the server in a message.
_PATH = re.compile(r"(?<![\w:/.])(?:/[\w.@+~-]+){2,}/?")
_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def safe_message(message: str, limit: int = 500) -> str:
    """One line, bounded, with server paths replaced."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = _PATH.sub("<path>", first)
    return first if len(first) <= limit else first[: limit - 3] + "..."


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    request_id = getattr(request.state, "request_id", None)
    body = {"code": code, "message": safe_message(message), "request_id": request_id}
    return json_response(
        {"success": False, "error": body},
        status,
        headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        return error_response(request, exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        return error_response(request, 422, "invalid_request", problems)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled_error", path=request.url.path)
        return error_response(request, 500, "internal_error", "internal error; see the server log")
