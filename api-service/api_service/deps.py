"""Request dependencies as `Annotated` aliases; routes ask for what they need.

Every protected route runs, in order: authentication (Bearer JWT, or an API
key when enabled) -> the caller's app policy -> the per-user rate limit ->
the route's scope. So an unknown app is refused before it is counted, and a
throttled caller learns it before anything else runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from analytics_shared.logging_config import get_logger
from analytics_shared.whitelist import AppPolicy, Whitelist
from api_service.auth.api_keys import API_KEY_HEADER, authenticate_api_key
from api_service.auth.rate_limit import RateLimiter
from api_service.auth.tokens import AuthError, AuthUnavailable, Principal, TokenValidator
from api_service.data.snapshots import SnapshotManager
from api_service.errors import ApiError
from api_service.settings import ApiSettings

__all__ = [
    "ManagerDep",
    "PolicyDep",
    "SettingsDep",
    "WhitelistDep",
    "policy_for",
    "require_scope",
]

log = get_logger(__name__)

_BEARER_CHALLENGE = 'Bearer realm="analytics-api"'
# auto_error=False: we answer in our own error shape; these document the schemes in OpenAPI.
_bearer = HTTPBearer(auto_error=False, description="Auth0 access token (RS256 JWT)")
_api_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="API key (when the server enables them)"
)


# `async def` on purpose: FastAPI runs a plain-`def` dependency on its thread
# pool (one thread hop each); these only read the app state.
async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_manager(request: Request) -> SnapshotManager:
    manager: SnapshotManager = request.app.state.snapshots
    return manager


async def get_whitelist(request: Request) -> Whitelist:
    whitelist: Whitelist = request.app.state.whitelist
    return whitelist


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ManagerDep = Annotated[SnapshotManager, Depends(get_manager)]
WhitelistDep = Annotated[Whitelist, Depends(get_whitelist)]


def _unauthorized(code: str, message: str, error: str | None = None) -> ApiError:
    challenge = _BEARER_CHALLENGE + (f', error="{error}"' if error else "")
    return ApiError(401, code, message, {"WWW-Authenticate": challenge})


async def _authenticate(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None,
    api_key: str | None,
) -> Principal:
    settings: ApiSettings = request.app.state.settings
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized(
                "invalid_token", "use 'Authorization: Bearer <token>'", "invalid_request"
            )
        validator: TokenValidator = request.app.state.validator
        try:
            return await validator.validate(token)
        except AuthError as exc:
            raise _unauthorized("invalid_token", str(exc), "invalid_token") from None
        except AuthUnavailable as exc:
            raise ApiError(503, "auth_unavailable", str(exc), {"Retry-After": "30"}) from None
    if api_key is not None and settings.api_keys_enabled:
        try:
            return authenticate_api_key(api_key, request.app.state.whitelist)
        except AuthError as exc:
            raise _unauthorized("invalid_api_key", str(exc)) from None
    raise _unauthorized("unauthorized", "missing bearer token")


def policy_for(principal: Principal, whitelist: Whitelist) -> AppPolicy:
    if principal.policy is not None:
        policy = whitelist.policies.get(principal.policy)
    else:
        policy = whitelist.policy_for(principal.app)
    if policy is None:
        raise ApiError(403, "unknown_application", "this application is not registered for the API")
    return policy


async def get_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    principal = await _authenticate(request, bearer, api_key)
    request.state.principal = principal
    policy = policy_for(principal, request.app.state.whitelist)
    request.state.policy = policy
    settings: ApiSettings = request.app.state.settings
    limit, window = settings.rate_limit_requests, settings.rate_limit_window
    if policy.rate_limit is not None:
        limit, window = policy.rate_limit.requests, policy.rate_limit.window_seconds
    limiter: RateLimiter = request.app.state.rate_limiter
    decision = await limiter.hit(principal.sub, limit, window)
    request.state.rate_limit = decision
    if not decision.allowed:
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit of {limit} requests per {window} s exceeded;"
            f" retry after {decision.headers()['Retry-After']} s",
            decision.headers(),
        )
    return principal


async def get_policy(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> AppPolicy:
    policy: AppPolicy = request.state.policy
    return policy


PolicyDep = Annotated[AppPolicy, Depends(get_policy)]


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"this endpoint needs the {scope!r} scope",
                {
                    "WWW-Authenticate": (
                        f'{_BEARER_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
                    )
                },
            )
        return principal

    return dependency
