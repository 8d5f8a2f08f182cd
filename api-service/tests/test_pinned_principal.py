"""The caller (`Principal`) a validated token yields is shared, so it must not
change: the token cache hands the very same object to every request that
repeats the token. Its raw claims (which may hold personal data such as an
email) never appear in its repr, so logging a principal cannot leak them."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from api_service.auth.principal import Principal
from api_service.auth.tokens import JwksCache, TokenValidator

AUDIENCE = "https://analytics-api.test"  # the session issuer's (conftest)


def test_a_cached_principal_is_shared_and_cannot_be_changed(issuer):
    token = issuer.mint(sub="shared-user", azp="demo-app")

    async def run() -> tuple[Principal, Principal]:
        jwks = JwksCache(issuer.jwks_url)
        validator = TokenValidator(
            jwks, issuer=issuer.issuer, audience=AUDIENCE, algorithms=["RS256"]
        )
        try:
            return await validator.validate(token), await validator.validate(token)
        finally:
            await jwks.aclose()

    first, second = asyncio.run(run())
    assert first is second  # one object for both requests ...
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.app = "another-app"  # type: ignore[misc]  # ... so no request may alter it
    assert second.app == "demo-app"


def test_a_principals_repr_leaves_its_claims_out():
    principal = Principal(sub="u1", app="demo-app", claims={"email": "ann@example.com"})
    assert "u1" in repr(principal) and "ann@example.com" not in repr(principal)
