"""The token attack suite: every hostile or broken token is refused (401), and
the JWKS cache neither floods the identity provider nor stops on its outage."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from api_service.auth.principal import Principal
from api_service.auth.tokens import JwksCache, TokenValidator
from api_service.dev.issuer import DevIssuer, SigningKey
from api_service.errors import AuthError, AuthUnavailable
from testsupport.clock import FakeClock
from testsupport.tokens import count_signature_checks

AUDIENCE = "https://analytics-api.test"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def claims(issuer: DevIssuer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": issuer.issuer,
        "sub": "attacker",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "scope": "read:analytics read:schema",
        "azp": "demo-app",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def own_issuer() -> Iterator[DevIssuer]:
    """A private issuer: these tests rotate keys and break the JWKS endpoint."""
    with DevIssuer(audience=AUDIENCE) as dev:
        yield dev


def validator_for(dev: DevIssuer, clock: FakeClock | None = None, **cache: Any) -> TokenValidator:
    """A validator; with `clock`, the JWKS and token caches run on it (tests advance it)."""
    clock = clock or FakeClock()
    jwks = JwksCache(dev.jwks_url, **{"ttl": 600, "cooldown": 60, **cache}, clock=clock)
    return TokenValidator(
        jwks, issuer=dev.issuer, audience=AUDIENCE, algorithms=["RS256"], leeway=5,
        clock=clock, wall_clock=clock.wall,
    )  # fmt: skip


async def _validate_all(validator: TokenValidator, tokens: list[str]) -> list[object]:
    results: list[object] = []
    try:
        for token in tokens:
            try:
                results.append(await validator.validate(token))
            except (AuthError, AuthUnavailable) as exc:
                results.append(exc)
    finally:
        await validator.jwks.aclose()
    return results


def validate(dev: DevIssuer, *tokens: str, **cache: Any) -> list[object]:
    return asyncio.run(_validate_all(validator_for(dev, **cache), list(tokens)))


def signed(dev: DevIssuer, payload: dict[str, Any]) -> str:
    """Sign any payload with the real key (PyJWT's encoder refuses odd claims)."""
    key = dev.keys[0]
    return jwt.PyJWS().encode(
        json.dumps(payload).encode(), key.private_key, "RS256", headers={"kid": key.kid}
    )


def _public_pem(dev: DevIssuer) -> bytes:
    return (
        dev.keys[0]
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _hs256_with_public_key(dev: DevIssuer) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": dev.keys[0].kid}
    signing_input = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims(dev)).encode())]
    )
    mac = hmac.new(_public_pem(dev), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


def _tampered_payload(dev: DevIssuer) -> str:
    header, _, signature = dev.mint(scopes="read:schema").split(".")
    forged = b64(json.dumps(claims(dev, scope="read:analytics read:schema admin")).encode())
    return f"{header}.{forged}.{signature}"


def _tampered_signature(dev: DevIssuer) -> str:
    token = dev.mint()
    head, payload, sig = token.split(".")
    flipped = ("A" if sig[10] != "A" else "B").join([sig[:10], sig[11:]])
    return f"{head}.{payload}.{flipped}"


# name: (the reason the validator gives, the token)
ATTACKS: dict[str, tuple[str, Callable[[DevIssuer], str]]] = {
    "alg_none": (
        "token algorithm not accepted",
        lambda d: raw_token({"alg": "none", "typ": "JWT", "kid": d.keys[0].kid}, claims(d)),
    ),
    "alg_None_casing": (
        "token algorithm not accepted",
        lambda d: raw_token({"alg": "None", "kid": d.keys[0].kid}, claims(d)),
    ),
    "hs256_signed_with_public_key": ("token algorithm not accepted", _hs256_with_public_key),
    "ps256_when_only_rs256_allowed": (
        "token algorithm not accepted",
        lambda d: d.mint(algorithm="PS256"),
    ),
    "expired": ("token expired", lambda d: d.mint(ttl=-120)),
    "not_yet_valid_nbf": ("token not yet valid", lambda d: d.mint(nbf=int(time.time()) + 3600)),
    "issued_in_the_future": ("token not yet valid", lambda d: d.mint(iat=int(time.time()) + 3600)),
    "wrong_issuer": (
        "token issuer not accepted",
        lambda d: d.mint(iss="https://evil.example.com/"),
    ),
    "issuer_prefix_trick": ("token issuer not accepted", lambda d: d.mint(iss=d.issuer + "evil/")),
    "issuer_without_trailing_slash": (
        "token issuer not accepted",
        lambda d: d.mint(iss=d.issuer.rstrip("/")),
    ),
    "issuer_as_list": ("token issuer not accepted", lambda d: signed(d, claims(d, iss=[d.issuer]))),
    "wrong_audience": (
        "token audience is not this API",
        lambda d: d.mint(aud="https://other-api.example.com"),
    ),
    "audience_list_without_ours": (
        "token audience is not this API",
        lambda d: d.mint(aud=["https://a.example", "https://b.example"]),
    ),
    "audience_prefix_trick": (
        "token audience is not this API",
        lambda d: d.mint(aud=AUDIENCE + ".evil"),
    ),
    "missing_exp": ("token lacks the required 'exp' claim", lambda d: d.mint(exp=None)),
    "missing_iat": ("token lacks the required 'iat' claim", lambda d: d.mint(iat=None)),
    "missing_sub": ("token lacks the required 'sub' claim", lambda d: d.mint(sub=None)),
    "missing_aud": ("token lacks the required 'aud' claim", lambda d: d.mint(aud=None)),
    "unknown_kid": (
        "token signed with an unknown key",
        lambda d: d.mint(headers={"kid": uuid.uuid4().hex}),
    ),
    "no_kid": ("token has no key id", lambda d: raw_token({"alg": "RS256"}, claims(d), b"x" * 256)),
    "signed_by_attacker_key_with_real_kid": (
        "token signature verification failed",
        lambda d: d.mint(key=_attacker_key(d.keys[0].kid)),
    ),
    "tampered_payload": ("token signature verification failed", _tampered_payload),
    "tampered_signature": ("token signature verification failed", _tampered_signature),
    "unknown_crit_header": (
        "malformed token",
        lambda d: d.mint(headers={"crit": ["exp-ext"], "exp-ext": 1}),
    ),
    "b64_false_unencoded_payload": (
        "token has critical header extensions this API does not support",
        lambda d: d.mint(headers={"b64": False, "crit": ["b64"]}),
    ),
    "jku_header_injection": (
        "token header not accepted",
        lambda d: d.mint(headers={"jku": "https://evil.example/jwks.json"}),
    ),
    "embedded_jwk_header": (
        "token header not accepted",
        lambda d: d.mint(headers={"jwk": _attacker_key("x").public_jwk}),
    ),
    "id_token_nonce": (
        "ID tokens are not accepted; send an access token for this API",
        lambda d: d.mint(nonce="n-0S6_WzA2Mj"),
    ),
    "id_token_at_hash": (
        "ID tokens are not accepted; send an access token for this API",
        lambda d: d.mint(at_hash="77QmUPtjPfzWtF2AnpK9RQ"),
    ),
    "id_token_audience_is_client_id": (
        "token audience is not this API",
        lambda d: d.mint(aud="demo-app", nonce=None),
    ),
    "typ_not_an_access_token": (
        "not an access token",
        lambda d: d.mint(headers={"typ": "dpop+jwt"}),
    ),
    "oversized_token": ("token is too large", lambda d: d.mint(padding="x" * 20_000)),
    "malformed_base64": ("malformed token", lambda d: "eyJhbGciOiJSUzI1NiJ9!!.e30.c2ln"),
    "two_parts_only": ("malformed token", lambda d: ".".join(d.mint().split(".")[:2])),
    "four_parts": ("malformed token", lambda d: d.mint() + ".extra"),
    "header_not_an_object": (
        "malformed token",
        lambda d: f"{b64(b'[1,2]')}.{b64(b'{}')}.{b64(b'sig')}",
    ),
    "non_ascii_token": ("malformed token", lambda d: d.mint() + "\u00e9"),
    "scope_not_a_string": (
        "token scopes are malformed",
        lambda d: d.mint(scopes=None, scope=["read:analytics"]),
    ),
    "empty_string": ("malformed token", lambda d: ""),
}

_attacker_keys: dict[str, SigningKey] = {}


def _attacker_key(kid: str) -> SigningKey:
    if kid not in _attacker_keys:
        _attacker_keys[kid] = SigningKey(kid=kid)
    return _attacker_keys[kid]


def test_the_suite_has_at_least_twenty_attacks():
    assert len(ATTACKS) >= 20


def test_every_attack_is_refused_for_its_reason_and_a_good_token_passes(own_issuer):
    names = list(ATTACKS)
    tokens = [ATTACKS[name][1](own_issuer) for name in names]
    good = own_issuer.mint(sub="good-user")
    results = validate(own_issuer, good, *tokens)
    assert isinstance(results[0], Principal) and results[0].sub == "good-user"
    got = {
        name: (type(r).__name__, getattr(r, "code", None), str(r))
        for name, r in zip(names, results[1:], strict=True)
    }
    expected = {name: ("AuthError", "invalid_token", ATTACKS[name][0]) for name in names}
    assert got == expected
    # The messages say what is wrong without echoing the token.
    for token, result in zip(tokens, results[1:], strict=True):
        assert len(token) < 12 or token not in str(result)


def test_claims_become_a_principal_with_scopes_and_app(own_issuer):
    m2m = own_issuer.mint(
        sub="svc-123@clients", azp=None, scopes="read:analytics", permissions=["read:schema"]
    )
    listed_aud = own_issuer.mint(aud=[AUDIENCE, own_issuer.issuer + "userinfo"])
    a, b = validate(own_issuer, m2m, listed_aud)
    assert isinstance(a, Principal) and a.app == "svc-123"
    assert a.scopes == {"read:analytics", "read:schema"}
    assert isinstance(b, Principal) and b.app == "demo-app"


def test_small_leeway_tolerates_clock_skew_and_no_more(own_issuer):
    # this validator's leeway is 5 s (PyJWT compares exp with the real clock)
    just_expired = own_issuer.mint(ttl=-2)
    too_late = own_issuer.mint(ttl=-7)  # more time passing only makes it later
    accepted, refused = validate(own_issuer, just_expired, too_late)
    assert isinstance(accepted, Principal)
    assert isinstance(refused, AuthError) and str(refused) == "token expired"


def test_a_kid_flood_costs_at_most_one_jwks_refetch_per_cooldown(own_issuer):
    good = own_issuer.mint()
    flood = [own_issuer.mint(headers={"kid": uuid.uuid4().hex}) for _ in range(200)]

    async def run() -> list[object]:
        validator = validator_for(own_issuer, cooldown=60)
        try:
            await validator.validate(good)  # the initial fetch
            before = own_issuer.jwks_requests

            async def one(token: str) -> object:
                try:
                    return await validator.validate(token)
                except AuthError as exc:
                    return exc

            results = await asyncio.gather(*(one(t) for t in flood))
            assert own_issuer.jwks_requests - before <= 1
            return results
        finally:
            await validator.jwks.aclose()

    results = asyncio.run(run())
    assert {(type(r), str(r)) for r in results} == {(AuthError, "token signed with an unknown key")}


def test_key_rotation_without_restart(own_issuer):
    old_token = own_issuer.mint(sub="old")

    clock = FakeClock()

    async def run() -> None:
        validator = validator_for(own_issuer, clock, ttl=1.0, cooldown=0.2)
        try:
            assert (await validator.validate(old_token)).sub == "old"
            new_key = own_issuer.rotate()
            new_token = own_issuer.mint(sub="new", key=new_key)
            clock.advance(0.25)  # past the unknown-kid cooldown
            assert (await validator.validate(new_token)).sub == "new"
            old_kid = own_issuer.keys[1].kid
            own_issuer.remove_key(old_kid)
            # Still cached: the old key keeps working until the cache expires ...
            assert (await validator.validate(old_token)).sub == "old"
            clock.advance(1.1)
            # ... and is refused once the refetched JWKS no longer has it.
            with pytest.raises(AuthError, match="unknown key"):
                await validator.validate(old_token)
            assert (await validator.validate(new_token)).sub == "new"
        finally:
            await validator.jwks.aclose()

    asyncio.run(run())


def test_jwks_outage_serves_stale_keys_then_gives_up(own_issuer):
    token = own_issuer.mint()

    clock = FakeClock()

    async def run() -> None:
        validator = validator_for(own_issuer, clock, ttl=0.2, cooldown=0.1, max_stale=1.0)
        try:
            await validator.validate(token)
            own_issuer.fail_jwks = True
            clock.advance(0.3)  # cache expired, identity provider down
            before = own_issuer.jwks_requests
            for _ in range(20):
                assert (await validator.validate(token)).sub == "user-1"
            # Retries during the outage are spaced by the cooldown, not one per request.
            assert own_issuer.jwks_requests - before <= 2
            clock.advance(1.0)  # beyond max_stale: the old keys are no longer trusted
            with pytest.raises(AuthUnavailable):
                await validator.validate(token)
            own_issuer.fail_jwks = False
            clock.advance(0.15)
            assert (await validator.validate(token)).sub == "user-1"
        finally:
            await validator.jwks.aclose()

    asyncio.run(run())


# -- the validated-token cache ---------------------------------------------------------


def test_a_repeated_token_skips_the_signature_check(own_issuer):
    tokens = [own_issuer.mint(sub=f"user-{i}") for i in range(3)]

    async def run() -> None:
        jwks = JwksCache(own_issuer.jwks_url, ttl=600, cooldown=60)
        validator = TokenValidator(
            jwks, issuer=own_issuer.issuer, audience=AUDIENCE, algorithms=["RS256"],
            cache_entries=2,
        )  # fmt: skip
        checks = count_signature_checks(validator)
        try:
            for _ in range(5):
                assert (await validator.validate(tokens[0])).sub == "user-0"
            assert checks[0] == 1
            for token in tokens:
                await validator.validate(token)
            assert checks[0] == 3 and len(validator._verified) == 2  # bounded: oldest dropped
            await validator.validate(tokens[0])
            assert checks[0] == 4
            # Refusals are never remembered.
            bad = own_issuer.mint(sub="x", aud="https://someone-else")
            for _ in range(2):
                with pytest.raises(AuthError, match="audience"):
                    await validator.validate(bad)
            assert checks[0] == 6
        finally:
            await jwks.aclose()

    asyncio.run(run())


def test_a_cached_token_stops_working_when_its_key_leaves_the_jwks(own_issuer):
    old_token = own_issuer.mint(sub="old")

    clock = FakeClock()

    async def run() -> None:
        validator = validator_for(own_issuer, clock, ttl=0.5, cooldown=0.1)
        checks = count_signature_checks(validator)
        try:
            assert (await validator.validate(old_token)).sub == "old"
            own_issuer.rotate()
            own_issuer.remove_key(own_issuer.keys[1].kid)
            # Within the JWKS TTL the old key is still known: the cached token passes.
            assert (await validator.validate(old_token)).sub == "old"
            assert checks[0] == 1
            clock.advance(0.6)  # past the TTL: the refetched JWKS lacks the key
            for _ in range(2):
                with pytest.raises(AuthError, match="unknown key"):
                    await validator.validate(old_token)
            assert not validator._verified
        finally:
            await validator.jwks.aclose()

    asyncio.run(run())


def test_a_jwks_refetch_sends_cached_tokens_through_full_validation(own_issuer):
    token = own_issuer.mint()

    clock = FakeClock()

    async def run() -> None:
        validator = validator_for(own_issuer, clock, ttl=0.2, cooldown=0.1)
        checks = count_signature_checks(validator)
        try:
            await validator.validate(token)
            await validator.validate(token)
            assert checks[0] == 1
            clock.advance(0.3)  # the JWKS is refetched: new key objects
            await validator.validate(token)
            await validator.validate(token)
            assert checks[0] == 2
        finally:
            await validator.jwks.aclose()

    asyncio.run(run())
