"""One error type for every failure: `AnalyticsError`.

API failures carry the API's error shape
`{"success": false, "error": {"code", "message", "request_id"}}` and the HTTP
status. Failures without an API answer have status 0 and a client-side code:
`network_error`, `timeout`, `token_error`, `invalid_response`,
`missing_dependency`. `retryable` is decided by the status (429, 503), not by
matching messages.
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = ["AnalyticsError"]


class AnalyticsError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        self.attempts = attempts
        self.body = body

    @property
    def retryable(self) -> bool:
        return self.status in (429, 503)

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    @classmethod
    def from_response(
        cls, response: httpx.Response, attempts: int, retry_after: float | None
    ) -> AnalyticsError:
        header_id = response.headers.get("x-request-id")
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and body.get("success") is False and "code" in error:
            return cls(
                response.status_code,
                str(error["code"]),
                str(error.get("message", "")),
                request_id=error.get("request_id") or header_id,
                retry_after=retry_after,
                attempts=attempts,
                body=body,
            )
        return cls(
            response.status_code,
            "invalid_response",
            f"HTTP {response.status_code} without the API's error shape: {response.text[:200]}",
            request_id=header_id,
            retry_after=retry_after,
            attempts=attempts,
        )
