"""Request dependencies as `Annotated` aliases; routes ask for what they need.

Every protected route runs, in order: authentication (Bearer JWT, or an API
key when enabled) -> the caller's app policy -> the per-user rate limit ->
the route's scope. So an unknown app is refused before it is counted, and a
throttled caller learns it before anything else runs.

What must always hold: only this module reads `app.state`; routes take
`CurrentPrincipal`/`ReadAnalytics`/`ReadSchema`, `PolicyDep`, `AccessDep`, `QueryServiceDep`,
`SnapshotsDep`, `WhitelistDep`, `MemoryStatusDep`, `IdentityDep`, `SignerDep`,
`EventsDep`, `SettingsDep`, `StatusFeedDep`, `AdminEtl`, `EtlCommandsDep`. The
policy is resolved once, by `get_principal`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from analytics_shared.whitelist import AppPolicy, Whitelist
from api_service.access.rewrite import QueryAccess
from api_service.access.rules import mask_keys, rules_for
from api_service.auth.api_keys import API_KEY_HEADER, authenticate_api_key
from api_service.auth.principal import Principal, policy_for
from api_service.auth.rate_limit import RateLimiter
from api_service.auth.signing import Signer
from api_service.auth.tokens import JwksCache, TokenValidator
from api_service.data.snapshots import SnapshotManager
from api_service.data.status_feed import EtlStatusFeed
from api_service.data.version_events import VersionEvents
from api_service.errors import (
    ApiError,
    CommandsNotConfigured,
    InsufficientScope,
    MalformedAuthorization,
    MissingCredentials,
    RateLimited,
)
from api_service.ops.etl_commands import EtlCommands
from api_service.query.service import QueryService
from api_service.settings import ApiSettings

__all__ = [
    "AccessDep",
    "AdminEtl",
    "CurrentPrincipal",
    "EtlCommandsDep",
    "EventsDep",
    "IdentityDep",
    "MemoryStatusDep",
    "PolicyDep",
    "QueryServiceDep",
    "ReadAnalytics",
    "ReadSchema",
    "ReadStatus",
    "SettingsDep",
    "SignerDep",
    "SnapshotsDep",
    "StatusDetails",
    "StatusFeedDep",
    "WhitelistDep",
    "require_scope",
]

# auto_error=False: we answer in our own error shape; these document the schemes in OpenAPI.
_bearer = HTTPBearer(auto_error=False, description="Auth0 access token (RS256 JWT)")
_api_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="API key (when the server enables them)"
)


# `async def` on purpose: FastAPI runs a plain-`def` dependency on its thread
# pool (one thread hop each); these only read the app state.
def _app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that returns what create_app put on `app.state.<name>`."""

    async def from_app_state(request: Request) -> Any:
        return getattr(request.app.state, name)

    return from_app_state


async def get_memory_status(request: Request) -> dict[str, object] | None:
    """The worker's memory budget and its use; None in an app without queries."""
    service: QueryService | None = getattr(request.app.state, "query_service", None)
    return service.memory_status() if service is not None else None


async def get_identity(request: Request) -> JwksCache:
    """The identity provider's key cache (its state is on /health and /metrics)."""
    validator: TokenValidator = request.app.state.validator
    return validator.jwks


async def get_etl_commands(request: Request) -> EtlCommands:
    """The ETL worker's queue; 501 when this API was not given ETL_STATE_DATABASE_URL."""
    commands: EtlCommands | None = getattr(request.app.state, "etl_commands", None)
    if commands is None:
        raise CommandsNotConfigured(
            "this API cannot reach the ETL worker: set ETL_STATE_DATABASE_URL"
        )
    return commands


EtlCommandsDep = Annotated[EtlCommands, Depends(get_etl_commands)]


SnapshotsDep = Annotated[SnapshotManager, Depends(_app_state("snapshots"))]
StatusFeedDep = Annotated[EtlStatusFeed, Depends(_app_state("status_feed"))]
MemoryStatusDep = Annotated[dict[str, object] | None, Depends(get_memory_status)]
IdentityDep = Annotated[JwksCache, Depends(get_identity)]
SignerDep = Annotated[Signer, Depends(_app_state("signer"))]
SettingsDep = Annotated[ApiSettings, Depends(_app_state("settings"))]
EventsDep = Annotated[VersionEvents, Depends(_app_state("events"))]
WhitelistDep = Annotated[Whitelist, Depends(_app_state("whitelist"))]
QueryServiceDep = Annotated[QueryService, Depends(_app_state("query_service"))]


async def _authenticate(request: Request, api_key: str | None) -> Principal:
    settings: ApiSettings = request.app.state.settings
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise MalformedAuthorization("use 'Authorization: Bearer <token>'")
        validator: TokenValidator = request.app.state.validator
        return await validator.validate(token)  # AuthError, AuthUnavailable
    if api_key is not None and settings.api_keys_enabled:
        return authenticate_api_key(api_key, request.app.state.whitelist)  # InvalidApiKey
    raise MissingCredentials("missing bearer token")


async def get_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    principal = await _authenticate(request, api_key)
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
        raise RateLimited(
            f"rate limit of {limit} requests per {window} s exceeded;"
            f" retry after {decision.headers()['Retry-After']} s",
            headers=decision.headers(),
        )
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_policy(request: Request, principal: CurrentPrincipal) -> AppPolicy:
    """The policy `get_principal` resolved for this request (not looked up again)."""
    policy: AppPolicy = request.state.policy
    return policy


PolicyDep = Annotated[AppPolicy, Depends(get_policy)]


async def get_access(request: Request, principal: CurrentPrincipal) -> QueryAccess | None:
    """The policy's row filters and column policies with this caller's claims
    (None when the policy restricts no table)."""
    rules = rules_for(request.state.policy)
    if rules is None:
        return None
    settings: ApiSettings = request.app.state.settings
    secret = settings.column_mask_secret
    keys = mask_keys(secret.get_secret_value()) if secret is not None else {}
    return QueryAccess(rules, principal.claims, keys)


AccessDep = Annotated[QueryAccess | None, Depends(get_access)]


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    async def dependency(principal: CurrentPrincipal) -> Principal:
        if scope not in principal.scopes:
            raise InsufficientScope(scope)
        return principal

    return dependency


async def may_see_status_details(request: Request) -> bool:
    """True for a valid bearer token with `read:status`; anything else (no token,
    a bad one) is simply the public view: /health never fails on credentials."""
    header = request.headers.get("authorization")
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    validator: TokenValidator = request.app.state.validator
    try:
        principal = await validator.validate(token.strip())
    except ApiError:
        return False
    return "read:status" in principal.scopes


StatusDetails = Annotated[bool, Depends(may_see_status_details)]
ReadAnalytics = Annotated[Principal, Depends(require_scope("read:analytics"))]
ReadSchema = Annotated[Principal, Depends(require_scope("read:schema"))]
AdminEtl = Annotated[Principal, Depends(require_scope("admin:etl"))]
ReadStatus = Annotated[Principal, Depends(require_scope("read:status"))]
