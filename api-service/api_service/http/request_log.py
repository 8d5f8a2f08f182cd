"""The request context around every request (pure ASGI middleware).

- request id: a well-formed incoming `X-Request-ID` is honoured, otherwise a
  new one is made; it is returned on every response and in every error body;
- request size: bodies larger than `max_body_bytes` are refused with 413,
  whether announced by Content-Length or streamed in chunks;
- rate-limit headers from the request's rate decision on every response;
- one structured log line per request: id, method, path (never the query
  string, which may hold SQL), status, duration, user, app, auth method, rows,
  query fingerprint. Never the token, never the SQL text.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from analytics_shared.logging_config import get_logger
from api_service.http.responses import json_bytes

__all__ = ["RequestContextMiddleware"]

log = get_logger("api_service.request")
# structlog runs its processors (timestamp, context) before the stdlib level
# check, so a request line below the configured level is skipped up front.
_level_check = logging.getLogger("api_service.request")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int = 262_144) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: dict[str, Any] = scope.setdefault("state", {})
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        state["request_id"] = request_id
        status = 500
        too_large = False

        async def reply_too_large() -> None:
            nonlocal status
            status = 413
            body = json_bytes(
                {
                    "success": False,
                    "error": {
                        "code": "request_too_large",
                        "message": f"the request body is larger than {self.max_body_bytes} bytes",
                        "request_id": request_id,
                    },
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", request_id.encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > self.max_body_bytes:
            await reply_too_large()
            self._log(scope, state, request_id, 413, started)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        response_started = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                if too_large:
                    # The app turned our exception into its own error; answer 413 instead.
                    return
                response_started = True
                status = message["status"]
                out = list(message.get("headers", []))
                present = {k.lower() for k, _ in out}
                out.append((b"x-request-id", request_id.encode()))
                decision = state.get("rate_limit")
                if decision is not None:
                    for name, value in decision.headers().items():
                        if name.lower().encode() not in present:
                            out.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": out}
            elif message["type"] == "http.response.body" and too_large:
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_context)
        except _BodyTooLarge:
            pass
        except Exception:
            self._log(scope, state, request_id, 500, started)
            raise
        if too_large and not response_started:
            await reply_too_large()
            status = 413
        self._log(scope, state, request_id, status, started)

    @staticmethod
    def _log(
        scope: Scope, state: dict[str, Any], request_id: str, status: int, started: float
    ) -> None:
        if not _level_check.isEnabledFor(logging.ERROR if status >= 500 else logging.INFO):
            return
        principal = state.get("principal")
        fields: dict[str, Any] = {
            "request_id": request_id,
            "pid": os.getpid(),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if principal is not None:
            fields.update(user=principal.sub, app=principal.app, auth=principal.auth_method)
        for key in ("rows", "query_fingerprint", "named_query"):
            if state.get(key) is not None:
                fields[key] = state[key]
        if status >= 500:
            log.error("request", **fields)
        else:
            log.info("request", **fields)
