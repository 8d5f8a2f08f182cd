"""Every error the API answers on purpose, each carrying its HTTP status and code.

    AnalyticsError (analytics_shared.errors)
    └── ApiError                    500 internal_error; base: status, code, headers
        ├── AuthError               401 invalid_token    the bearer token is not accepted
        │   ├── MalformedAuthorization 401 invalid_token (error="invalid_request")
        │   ├── MissingCredentials  401 unauthorized     no token, no API key
        │   ├── InvalidApiKey       401 invalid_api_key
        │   └── InvalidTicket       401 invalid_ticket   an /events ticket altered or expired
        ├── AuthUnavailable         503 auth_unavailable no signing keys (also TransientError)
        ├── Forbidden               403
        │   ├── UnknownApplication  403 unknown_application
        │   ├── InsufficientScope   403 insufficient_scope
        │   ├── AdHocSqlNotAllowed  403 ad_hoc_sql_not_allowed
        │   ├── MissingClaim        403 missing_claim    a row filter or parameter needs a claim
        │   └── InvalidClaim        403 invalid_claim    the claim is not of the type its use needs
        ├── UnknownQuery            404 unknown_query    (missing and not-yours look alike)
        ├── StaleCursor             409 stale_cursor     a page cursor from an older data version
        ├── RequestHeaderTooLarge   431 request_header_too_large  request line or headers past the
        │                                                LIMIT_REQUEST_* limits (connection closed)
        ├── RateLimited             429 rate_limited     with the X-RateLimit-* headers
        ├── TooManyConcurrentQueries 429 too_many_concurrent_queries  per user/app cap (Retry-After)
        ├── QueueTimeout            503 queue_timeout    no query slot before the deadline
        ├── BadRequest              400
        │   ├── QueryRejected       400 <per refusal>    the SQL guard's code (syntax_error, ...)
        │   │   └── ColumnNotAllowed 400 column_not_allowed a column the policy hides
        │   ├── UnsupportedFormat   400 unsupported_format
        │   ├── QueryTimeout        400 query_timeout
        │   ├── ResultTooLarge      400 result_too_large
        │   ├── QueryFailed         400 query_error      DuckDB refused the query
        │   └── InvalidCursor       400 invalid_cursor   altered, or made for another query
        ├── ParameterError          422 invalid_parameters
        │   └── ClaimBoundParameter 422 claim_bound_parameter  the token fills it, not the caller
        ├── DataUnavailable         503 no_data          (Retry-After: 5)
        │   ├── NoSnapshot          503 no_data          nothing verified is loaded yet
        │   └── SnapshotError       503 no_data          a version failed verification (caught
        │                                                by the refresh; never reaches a client)
        ├── Busy                    503 busy             the worker's memory budget for large
        │                                                results is taken (Retry-After: 2)
        ├── StreamStalled           a streamed answer's reader stopped reading: cut
        ├── TooManyConnections      503 too_many_connections  this worker's /events streams are full
        └── StreamTooLarge          a streamed result passed its cap after the answer began:
                                    the connection is cut, no error body can be sent

What must always hold: an error's status, code and message are what the API
documents (docs/api-docs.md); `http/error_handlers.py` turns any `ApiError`
into the one error shape, and nothing else builds error responses. Classes
keep the builtin base callers caught before (`ValueError`, `RuntimeError`).
"""

from __future__ import annotations

from collections.abc import Mapping

from analytics_shared.errors import AnalyticsError, TransientError

__all__ = [
    "AdHocSqlNotAllowed",
    "ApiError",
    "AuthError",
    "AuthUnavailable",
    "BadRequest",
    "Busy",
    "ClaimBoundParameter",
    "ColumnNotAllowed",
    "CommandsNotConfigured",
    "CommandsUnavailable",
    "DataUnavailable",
    "Forbidden",
    "InsufficientScope",
    "InvalidApiKey",
    "InvalidClaim",
    "InvalidCursor",
    "InvalidTicket",
    "MalformedAuthorization",
    "MissingClaim",
    "MissingCredentials",
    "NoSnapshot",
    "ParameterError",
    "QueryFailed",
    "QueryRejected",
    "QueryTimeout",
    "QueueTimeout",
    "RateLimited",
    "RequestHeaderTooLarge",
    "ResultTooLarge",
    "SnapshotError",
    "StaleCursor",
    "StreamStalled",
    "StreamTooLarge",
    "TooManyConcurrentQueries",
    "TooManyConnections",
    "UnknownApplication",
    "UnknownCommand",
    "UnknownQuery",
    "UnsupportedFormat",
]

BEARER_CHALLENGE = 'Bearer realm="analytics-api"'


class ApiError(AnalyticsError):
    """Base: answered as `status` with `{"code": code, "message": str(self)}`."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {**self.default_headers(), **(headers or {})}

    def default_headers(self) -> dict[str, str]:
        return {}


# -- authentication (401) -----------------------------------------------------
class AuthError(ApiError):
    """The token is invalid (-> 401). The message is safe to show."""

    status = 401
    code = "invalid_token"
    challenge_error: str | None = "invalid_token"  # the `error=` of WWW-Authenticate

    def default_headers(self) -> dict[str, str]:
        error = self.challenge_error
        return {"WWW-Authenticate": BEARER_CHALLENGE + (f', error="{error}"' if error else "")}


class MalformedAuthorization(AuthError):
    challenge_error = "invalid_request"


class MissingCredentials(AuthError):
    code = "unauthorized"
    challenge_error = None


class InvalidApiKey(AuthError):
    code = "invalid_api_key"
    challenge_error = None


class InvalidTicket(AuthError):
    code = "invalid_ticket"
    challenge_error = None


class AuthUnavailable(ApiError, TransientError):
    """No signing keys can be had: the identity provider is unreachable (-> 503)."""

    status = 503
    code = "auth_unavailable"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "30"}


# -- authorisation (403, 404, 429) --------------------------------------------
class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class UnknownApplication(Forbidden):
    code = "unknown_application"


class InsufficientScope(Forbidden):
    code = "insufficient_scope"

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__(f"this endpoint needs the {scope!r} scope")

    def default_headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'{BEARER_CHALLENGE}, error="insufficient_scope", scope="{self.scope}"'
            )
        }


class AdHocSqlNotAllowed(Forbidden):
    code = "ad_hoc_sql_not_allowed"


class MissingClaim(Forbidden):
    """The caller's token lacks a claim its policy's row filter or a
    claim-bound parameter needs: nothing is run."""

    code = "missing_claim"


class InvalidClaim(Forbidden):
    code = "invalid_claim"


class UnknownQuery(ApiError):
    status = 404
    code = "unknown_query"


class StaleCursor(ApiError):
    status = 409
    code = "stale_cursor"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"


class TooManyConcurrentQueries(ApiError):
    """The caller (user or app) already has its maximum of queries running or queued."""

    status = 429
    code = "too_many_concurrent_queries"


class QueueTimeout(ApiError, RuntimeError):
    """Every query slot stayed busy until the request's deadline."""

    status = 503
    code = "queue_timeout"


# -- the query (400, 422) -------------------------------------------------------
class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class QueryRejected(BadRequest, ValueError):
    """The SQL guard refused the query; the message tells a legitimate user why."""

    def __init__(self, message: str, code: str = "query_rejected") -> None:
        super().__init__(message)
        self.code = code


class ColumnNotAllowed(QueryRejected):
    """The query names a column its policy hides (or one that does not exist)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "column_not_allowed")


class UnsupportedFormat(BadRequest, ValueError):
    code = "unsupported_format"


class QueryTimeout(BadRequest, RuntimeError):
    code = "query_timeout"


class ResultTooLarge(BadRequest, RuntimeError):
    """The result passed MAX_RESULT_BYTES (Arrow bytes): refused before any
    encoding, so one query cannot take a worker's memory (e.g. `list()` of a
    whole table in one row)."""

    code = "result_too_large"


class QueryFailed(BadRequest):
    """DuckDB refused or failed the query (a binder error, a bad cast, ...)."""

    code = "query_error"


class InvalidCursor(BadRequest, ValueError):
    code = "invalid_cursor"


class ParameterError(ApiError, ValueError):
    """A caller's parameter value is missing, unknown or invalid (-> 422)."""

    status = 422
    code = "invalid_parameters"


class ClaimBoundParameter(ParameterError):
    """The caller sent a value for a named-query parameter the token fills."""

    code = "claim_bound_parameter"


# -- the data (503) -------------------------------------------------------------
class DataUnavailable(ApiError, RuntimeError):
    status = 503
    code = "no_data"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class NoSnapshot(DataUnavailable):
    """No verified snapshot is loaded yet (-> 503)."""


class SnapshotError(DataUnavailable):
    """A snapshot failed verification or could not be opened."""


class Busy(ApiError, TransientError):
    """The worker's budget for large results and streams is taken for longer
    than the admission wait (query/admission.py): try again shortly (-> 503)."""

    status = 503
    code = "busy"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class RequestHeaderTooLarge(ApiError):
    """Answered by the HTTP protocol itself (ops/uvicorn_worker.py), before any
    route: the request head passed a LIMIT_REQUEST_* limit."""

    status = 431
    code = "request_header_too_large"


class TooManyConnections(ApiError):
    status = 503
    code = "too_many_connections"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "30"}


class TooManyUserConnections(TooManyConnections):
    """The caller's own streams, not the server's: 429, like other per-user caps."""

    status = 429


class StreamTooLarge(ApiError, RuntimeError):
    """A streamed result passed its cap: the connection is cut so that no
    client mistakes a partial export for a complete one."""

    code = "result_too_large"


# -- the ETL's command queue (POST /admin/commands) ------------------------------
class UnknownCommand(ApiError):
    status = 404
    code = "unknown_command"


class CommandsNotConfigured(ApiError):
    """This API has no ETL_STATE_DATABASE_URL: it cannot reach the worker (-> 501)."""

    status = 501
    code = "commands_not_configured"


class CommandsUnavailable(ApiError, TransientError):
    """The ETL's state database did not answer (-> 503)."""

    status = 503
    code = "commands_unavailable"

    def default_headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class StreamStalled(ApiError, RuntimeError):
    """The client stopped reading a stream for STREAM_IDLE_WRITE_SECONDS: the
    stream is closed (cursor and snapshot lease released) and the connection cut."""

    code = "stream_stalled"
