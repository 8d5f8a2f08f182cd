"""Request dependencies as `Annotated` aliases; routes ask for what they need."""

from __future__ import annotations

from typing import Annotated

from analytics_shared.whitelist import AppPolicy, Whitelist
from fastapi import Depends, Request

from api_service.auth import AuthError, Principal, TokenValidator
from api_service.errors import ApiError
from api_service.settings import ApiSettings
from api_service.snapshots import SnapshotManager

__all__ = [
    "ManagerDep",
    "SettingsDep",
    "WhitelistDep",
    "require_scope",
]

_BEARER_CHALLENGE = 'Bearer realm="analytics-api"'


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def get_manager(request: Request) -> SnapshotManager:
    return request.app.state.snapshots


def get_whitelist(request: Request) -> Whitelist:
    return request.app.state.whitelist


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ManagerDep = Annotated[SnapshotManager, Depends(get_manager)]
WhitelistDep = Annotated[Whitelist, Depends(get_whitelist)]


async def get_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "missing bearer token", {"WWW-Authenticate": _BEARER_CHALLENGE}
        )
    validator: TokenValidator = request.app.state.validator
    try:
        principal = await validator.validate(token.strip())
    except AuthError as exc:
        raise ApiError(
            401,
            "invalid_token",
            str(exc),
            {"WWW-Authenticate": f'{_BEARER_CHALLENGE}, error="invalid_token"'},
        ) from None
    request.state.principal = principal
    return principal


def require_scope(scope: str):
    async def dependency(
        request: Request, principal: Annotated[Principal, Depends(get_principal)]
    ) -> Principal:
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


def policy_for(principal: Principal, whitelist: Whitelist) -> AppPolicy:
    policy = whitelist.policy_for(principal.app)
    if policy is None:
        raise ApiError(403, "unknown_application", "this application is not registered for the API")
    return policy
