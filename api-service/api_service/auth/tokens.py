"""Auth0 JWT validation (RS256 via JWKS) and the caller it yields.

What a token must be to pass (anything else is `AuthError`, a 401):

- at most `MAX_TOKEN_BYTES`, three base64url parts, a JSON header and payload;
- `alg` one of the configured asymmetric algorithms and the same as the JWK's
  own `alg` when it names one (so `none` and HS256-signed-with-the-public-key
  never verify); no `crit` header (we implement no JWS extensions);
- signed by a key in the issuer's JWKS (`kid` required);
- `exp`, `iat`, `iss`, `aud` and `sub` present; `exp`/`nbf`/`iat` checked with
  a small leeway; `iss` equal to the configured issuer (exact string);
  `aud` (string or list) containing the API audience;
- an access token, not an ID token. Our rule: a token carrying `nonce`,
  `at_hash` or `c_hash` (claims only OpenID Connect ID tokens have) or whose
  header `typ` is neither `JWT` nor `at+jwt` is refused. An ID token's `aud` is
  the client id, so the audience check refuses it too; the rule is the second
  lock on the same door.

The JWKS is fetched with an async client (never blocking the event loop),
cached for `ttl`, refetched on an unknown `kid` at most once per `cooldown`
(a flood of random kids costs the identity provider one request per cooldown),
and served stale for up to `max_stale` when the provider is unreachable.

Validated tokens are remembered (by SHA-256 of the token, at most
`TOKEN_CACHE_ENTRIES`) until min(exp, now + `TOKEN_CACHE_SECONDS`), so a
client repeating its token skips the signature check. A remembered token
still asks the JWKS cache for its key on every request (which refreshes it
after `ttl` as before) and is only accepted while that is the very key object
that verified it: a key removed from the JWKS, or any refetch, sends the
token through the full validation again. Refusals are never remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from analytics_shared.logging_config import get_logger
from api_service.auth.principal import Principal
from api_service.errors import AuthError, AuthUnavailable

__all__ = [
    "MAX_TOKEN_BYTES",
    "TOKEN_CACHE_ENTRIES",
    "TOKEN_CACHE_SECONDS",
    "JwksCache",
    "JwksKey",
    "TokenValidator",
]

log = get_logger(__name__)

MAX_TOKEN_BYTES = 8192
TOKEN_CACHE_ENTRIES = 4096
TOKEN_CACHE_SECONDS = 60.0
MAX_JWKS_BYTES = 512 * 1024
_ACCESS_TOKEN_TYPES = {"jwt", "at+jwt", "application/at+jwt"}
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC"}


@dataclass(frozen=True)
class JwksKey:
    kty: str
    alg: str | None
    key: Any  # a cryptography public key

    def accepts(self, alg: str) -> bool:
        """The token's alg fits this key: same family, and the JWK's own alg if declared."""
        if self.alg is not None and self.alg != alg:
            return False
        return _KEY_TYPES.get(alg[:2]) == self.kty


class JwksCache:
    """Signing keys by `kid`, fetched asynchronously and cached."""

    def __init__(
        self,
        url: str,
        ttl: float = 600.0,
        *,
        cooldown: float = 60.0,
        max_stale: float = 86_400.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.clock = clock  # monotonic seconds; tests pass a controllable one
        self.ttl = ttl
        self.cooldown = cooldown
        self.max_stale = max_stale
        self._client = httpx.AsyncClient(timeout=timeout, transport=transport)
        self._keys: dict[str, JwksKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self.last_error: str | None = None  # why the last fetch failed (None: it worked)

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def age(self) -> float | None:
        return None if self._fetched_at is None else self.clock() - self._fetched_at

    async def _fetch(self) -> dict[str, JwksKey]:
        response = await self._client.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("JWKS document is too large")
        document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("JWKS document has no 'keys' list")
        keys: dict[str, JwksKey] = {}
        for jwk in document["keys"]:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC") or "d" in jwk:
                continue
            try:
                public = PyJWK.from_dict(jwk).key
            except (jwt.PyJWTError, ValueError, TypeError):
                log.warning("jwks_key_skipped", kid=jwk["kid"][:64])
                continue
            alg = jwk.get("alg")
            keys[jwk["kid"]] = JwksKey(jwk["kty"], alg if isinstance(alg, str) else None, public)
        return keys

    async def _refresh(self, reason: str) -> None:
        """Fetch the JWKS; on failure keep the old keys (they expire after `max_stale`)."""
        try:
            keys = await self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            # Stamped when the attempt ends, so requests arriving meanwhile wait for it.
            self._attempted_at = self.clock()
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            log.warning(
                "jwks_fetch_failed",
                reason=reason,
                url=self.url,
                error=self.last_error,
                serving_stale=bool(self._usable_keys()),
            )
            return
        self._keys = keys
        self._fetched_at = self._attempted_at = self.clock()
        self.last_error = None
        log.info("jwks_fetched", reason=reason, keys=len(keys))

    def _usable_keys(self) -> dict[str, JwksKey]:
        age = self.age
        return self._keys if age is not None and age <= self.max_stale else {}

    def _refresh_reason(self, kid: str) -> str | None:
        now = self.clock()
        cooled = self._attempted_at is None or now - self._attempted_at >= self.cooldown
        last_failed = self._attempted_at is not None and (
            self._fetched_at is None or self._attempted_at > self._fetched_at
        )
        if self._fetched_at is None or now - self._fetched_at > self.ttl:
            # A normal expiry refetches at once; after a failure, once per cooldown.
            return "expired" if cooled or not last_failed else None
        if kid and kid not in self._keys and cooled:
            return "unknown_kid"
        return None

    async def ensure_fetched(self) -> None:
        """Fetch now when no keys were ever fetched or they expired (once per cooldown
        after a failure); never raises. Start-up and /health call it."""
        if self._refresh_reason("") is not None and not self._lock.locked():
            async with self._lock:
                reason = self._refresh_reason("")
                if reason is not None:
                    await self._refresh(reason)

    def status(self) -> dict[str, object]:
        """The identity provider as /health reports it: `ok`, `stale` (serving keys
        past their refresh time because fetching fails) or `unavailable` (none)."""
        age = self.age
        if not self._usable_keys():
            state = "unavailable"
        elif age is not None and age > self.ttl and self.last_error is not None:
            state = "stale"
        else:
            state = "ok"
        return {
            "status": state,
            "jwks_url": self.url,
            "keys": len(self._usable_keys()),
            "keys_age_seconds": None if age is None else round(age, 1),
            "last_error": self.last_error,
        }

    async def get(self, kid: str) -> JwksKey:
        if self._lock.locked() or self._refresh_reason(kid) is not None:
            async with self._lock:
                # Requests that queued behind a refresh find it done and skip theirs.
                reason = self._refresh_reason(kid)
                if reason is not None:
                    await self._refresh(reason)
        keys = self._usable_keys()
        key = keys.get(kid)
        if key is not None:
            return key
        if not keys:
            raise AuthUnavailable("signing keys are unavailable; try again shortly")
        raise AuthError("token signed with an unknown key")


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    kid: str
    key: JwksKey  # the key object that verified it
    exp: float  # the token's exp (wall clock)
    until: float  # monotonic: when this entry stops being trusted


class TokenValidator:
    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        leeway: int = 30,
        cache_entries: int = TOKEN_CACHE_ENTRIES,
        cache_seconds: float = TOKEN_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self.cache_entries = cache_entries
        self.cache_seconds = cache_seconds
        # Injectable for tests: monotonic seconds, and the wall clock `exp` is compared with.
        self.clock = clock
        self.wall_clock = wall_clock
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()

    async def validate(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token is too large")
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            if self.wall_clock() < cached.exp and self.clock() < cached.until:
                try:
                    key = await self.jwks.get(cached.kid)  # refreshes the JWKS when due
                except AuthError:
                    self._verified.pop(digest, None)
                    raise
                if key is cached.key:
                    if digest in self._verified:  # another request may have dropped it meanwhile
                        self._verified.move_to_end(digest)
                    return cached.principal
            self._verified.pop(digest, None)
        principal, kid, key = await self._validate(token)
        self._remember(digest, principal, kid, key)
        return principal

    def _remember(self, digest: bytes, principal: Principal, kid: str, key: JwksKey) -> None:
        if self.cache_entries <= 0:
            return
        exp = principal.claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self.wall_clock():
            return  # accepted within the leeway only: not remembered
        until = self.clock() + self.cache_seconds
        self._verified[digest] = _Verified(principal, kid, key, float(exp), until)
        self._verified.move_to_end(digest)
        while len(self._verified) > self.cache_entries:
            self._verified.popitem(last=False)

    async def _validate(self, token: str) -> tuple[Principal, str, JwksKey]:
        if token.count(".") != 2 or not token.isascii():
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthError("token algorithm not accepted")
        if "crit" in header:
            raise AuthError("token has critical header extensions this API does not support")
        if "b64" in header or "jku" in header or "x5u" in header or "jwk" in header:
            raise AuthError("token header not accepted")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES):
            raise AuthError("not an access token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise AuthError("token has no key id")
        key = await self.jwks.get(kid)
        if not key.accepts(alg):
            raise AuthError("token algorithm does not match its key")
        claims = self._decode(token, key, alg)
        return self._principal(claims), kid, key

    def _decode(self, token: str, key: JwksKey, alg: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the required {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise AuthError("token audience is not this API") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer not accepted") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature verification failed") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise AuthError("invalid token") from None
        if not isinstance(claims, dict):
            raise AuthError("invalid token")
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        if any(c in claims for c in _ID_TOKEN_CLAIMS):
            raise AuthError("ID tokens are not accepted; send an access token for this API")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 256:
            raise AuthError("token subject is invalid")
        scope = claims.get("scope", "")
        permissions = claims.get("permissions", [])
        if not isinstance(scope, str) or not isinstance(permissions, list):
            raise AuthError("token scopes are malformed")
        scopes = set(scope.split())
        scopes.update(p for p in permissions if isinstance(p, str))
        app = claims.get("azp") or claims.get("client_id")
        if app is None and sub.endswith("@clients"):
            app = sub.removesuffix("@clients")
        if app is not None and not isinstance(app, str):
            raise AuthError("token client id is malformed")
        return Principal(sub=sub, app=app, scopes=frozenset(scopes), claims=claims)
