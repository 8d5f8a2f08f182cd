"""Auth0 JWT validation (RS256 via JWKS) and the caller it yields."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from analytics_shared.logging_config import get_logger
from jwt import PyJWK

__all__ = ["AuthError", "JwksCache", "Principal", "TokenValidator"]

log = get_logger(__name__)


class AuthError(Exception):
    """The token is missing or invalid (-> 401). The message is safe to show."""


@dataclass(frozen=True)
class Principal:
    sub: str
    app: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class JwksCache:
    """Keys by `kid`, fetched asynchronously and cached for `ttl` seconds."""

    def __init__(self, url: str, ttl: float = 600.0, timeout: float = 5.0) -> None:
        self.url = url
        self.ttl = ttl
        self._client = httpx.AsyncClient(timeout=timeout)
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _refresh(self) -> None:
        response = await self._client.get(self.url)
        response.raise_for_status()
        keys: dict[str, PyJWK] = {}
        for jwk in response.json().get("keys", []):
            if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig" or "kid" not in jwk:
                continue
            keys[jwk["kid"]] = PyJWK.from_dict(jwk)
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def get(self, kid: str) -> PyJWK:
        if time.monotonic() - self._fetched_at > self.ttl or kid not in self._keys:
            async with self._lock:
                if time.monotonic() - self._fetched_at > self.ttl or kid not in self._keys:
                    try:
                        await self._refresh()
                    except (httpx.HTTPError, ValueError) as exc:
                        log.warning("jwks_fetch_failed", error=str(exc))
        key = self._keys.get(kid)
        if key is None:
            raise AuthError("token signed with an unknown key")
        return key


class TokenValidator:
    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        leeway: int = 30,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.leeway = leeway

    async def validate(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed token") from None
        if header.get("alg") not in self.algorithms:
            raise AuthError("token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("token has no key id")
        key = await self.jwks.get(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        scopes = set(str(claims.get("scope", "")).split())
        permissions = claims.get("permissions")
        if isinstance(permissions, list):
            scopes.update(p for p in permissions if isinstance(p, str))
        sub = str(claims["sub"])
        app = claims.get("azp") or (
            sub.removesuffix("@clients") if sub.endswith("@clients") else None
        )
        return Principal(sub=sub, app=app, scopes=frozenset(scopes), claims=claims)
