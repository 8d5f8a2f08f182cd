"""Time-dependent token guarantees, pinned with a controllable clock (no sleeps):
the verified-token cache trusts a token for 60 s at most and never past its
`exp`, the JWKS is served stale for 24 h by default (through `create_app`),
and the 8 KiB token cap is exact."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from api_service.auth.principal import Principal
from api_service.auth.tokens import MAX_TOKEN_BYTES, JwksCache, TokenValidator
from api_service.dev.issuer import DevIssuer
from api_service.errors import AuthError
from testsupport.api_app import api_env, make_app_client
from testsupport.clock import FakeClock
from testsupport.tokens import count_signature_checks

AUDIENCE = "https://analytics-api.test"


@pytest.fixture
def own_issuer():
    with DevIssuer(audience=AUDIENCE) as dev:
        yield dev


def _validator(dev: DevIssuer, clock: FakeClock, **kwargs: Any) -> TokenValidator:
    jwks = JwksCache(dev.jwks_url, ttl=600, cooldown=60, clock=clock)
    return TokenValidator(
        jwks,
        issuer=dev.issuer,
        audience=AUDIENCE,
        algorithms=["RS256"],
        clock=clock,
        wall_clock=clock.wall,
        **kwargs,
    )


def test_a_verified_token_is_trusted_for_sixty_seconds_at_most(own_issuer):
    """docs: validated tokens are remembered for TOKEN_CACHE_SECONDS (60 s)."""
    clock = FakeClock()
    token = own_issuer.mint(ttl=3600)

    async def run() -> list[int]:
        validator = _validator(own_issuer, clock)  # the default cache_seconds
        checks = count_signature_checks(validator)
        seen = []
        try:
            for step in (0, 59.5, 0.4, 0.2, 1.0):
                clock.advance(step)
                assert (await validator.validate(token)).sub == "user-1"
                seen.append(checks[0])
        finally:
            await validator.jwks.aclose()
        return seen

    # 0 s: verified; 59.5 s and 59.9 s: from the cache; 60.1 s: verified again
    # (and remembered anew); 61.1 s: from the cache again.
    assert asyncio.run(run()) == [1, 1, 1, 2, 2]


def test_a_cached_token_is_not_served_past_its_exp(own_issuer):
    """The cache keeps a token only until its `exp`, even within 60 s."""
    clock = FakeClock()
    token = own_issuer.mint(ttl=30)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]

    async def run() -> tuple[int, int]:
        validator = _validator(own_issuer, clock, leeway=0)
        checks = count_signature_checks(validator)
        try:
            await validator.validate(token)
            clock.advance(exp - clock.wall() - 1)  # one second before exp: cached
            await validator.validate(token)
            before = checks[0]
            clock.advance(2)  # past exp on the validator's clock: not from the cache
            await validator.validate(token)  # (PyJWT's own clock still says valid)
            return before, checks[0]
        finally:
            await validator.jwks.aclose()

    assert asyncio.run(run()) == (1, 2)


def _token_of_length(dev: DevIssuer, length: int) -> str:
    """A valid token exactly `length` characters long (or the shortest longer one)."""
    base = len(dev.mint(padding=""))
    for n in range(max(0, (length - base) * 3 // 4 - 8), length):
        token = dev.mint(padding="x" * n)
        if len(token) >= length:
            return token
    raise AssertionError("unreachable")


def test_the_token_size_cap_is_exactly_8_kib(own_issuer):
    assert MAX_TOKEN_BYTES == 8192
    at_cap = _token_of_length(own_issuer, 8192)
    over = _token_of_length(own_issuer, 8193)
    assert len(at_cap) == 8192 and 8192 < len(over) <= 8196

    async def run() -> list[object]:
        validator = _validator(own_issuer, FakeClock())
        out: list[object] = []
        try:
            for token in (at_cap, over):
                try:
                    out.append(await validator.validate(token))
                except AuthError as exc:
                    out.append(exc)
        finally:
            await validator.jwks.aclose()
        return out

    ok, refused = asyncio.run(run())
    assert isinstance(ok, Principal) and ok.sub == "user-1"
    assert isinstance(refused, AuthError) and str(refused) == "token is too large"


def test_the_api_serves_stale_signing_keys_for_24_hours_by_default(own_issuer, tmp_path):
    """JWKS_MAX_STALE_SECONDS (default 86400) as create_app wires it: through an
    identity-provider outage the API keeps accepting tokens for 24 h, then
    answers 503 auth_unavailable; then recovers when the provider is back."""
    env = api_env(tmp_path, own_issuer, {"policies": {"default": {"tables": ["inventory"]}}})
    with make_app_client(env) as client:
        validator = client.app.state.validator
        assert validator.jwks.max_stale == 86_400  # the default reached the cache
        # The keys were fetched on the real monotonic clock: continue from its reading.
        base = time.monotonic()
        clock = FakeClock()
        clock.now = base
        validator.jwks.clock = validator.clock = clock
        validator.cache_entries = 0  # every request asks the JWKS cache
        auth = {"Authorization": f"Bearer {own_issuer.mint(ttl=3600)}"}

        assert client.get("/schema", headers=auth).status_code == 200
        own_issuer.fail_jwks = True
        for hours in (1, 12, 23.9):
            clock.now = base + hours * 3600  # TTL long past; every refetch fails
            response = client.get("/schema", headers=auth)
            assert response.status_code == 200, (hours, response.text)
        clock.now = base + 86_400 + 120
        refused = client.get("/schema", headers=auth)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "auth_unavailable"
        assert "Retry-After" in refused.headers or refused.headers.get("retry-after")
        own_issuer.fail_jwks = False
        clock.advance(61)  # past the refetch cooldown
        assert client.get("/schema", headers=auth).status_code == 200
