"""The token attack suite: every hostile or broken token is refused (401), and
the JWKS cache neither floods the identity provider nor stops on its outage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from structlog.testing import capture_logs

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


# -- what the JWKS document may hold, and which keys a token may use ------------------


class _Jwks:
    """The identity provider's JWKS endpoint as an httpx transport: serves
    `document` (or `status`), counts the requests."""

    def __init__(self, document: Any) -> None:
        self.document = document
        self.status = 200
        self.requests = 0
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.status != 200:
            return httpx.Response(self.status)
        if isinstance(self.document, bytes):
            return httpx.Response(200, content=self.document)
        return httpx.Response(200, json=self.document)


def _cache(jwks: _Jwks, clock: FakeClock, **kwargs: Any) -> JwksCache:
    options = {"ttl": 600, "cooldown": 60, "max_stale": 3600, **kwargs}
    return JwksCache("https://idp.test/jwks", clock=clock, transport=jwks.transport, **options)


async def _outcomes(cache: JwksCache, kids: list[str]) -> list[str]:
    out = []
    for kid in kids:
        try:
            out.append(type(await cache.get(kid)).__name__)
        except (AuthError, AuthUnavailable) as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def test_only_public_signing_keys_of_known_types_are_taken(own_issuer):
    good = own_issuer.keys[0].public_jwk
    document = {
        "keys": [
            "not-an-object",
            {**good, "kid": 7},  # kid not a string
            {**good, "kid": "enc", "use": "enc"},
            {**good, "kid": "tls", "use": "tls"},  # not "sig" either (and sorts after it)
            {**good, "kid": "no-use"} | {"use": "sig"},
            {k: v for k, v in good.items() if k != "use"} | {"kid": "implicit-sig"},
            {"kid": "hmac", "kty": "oct", "k": "c2VjcmV0"},
            {**good, "kid": "private", "d": "AQAB"},
            {**good, "kid": "broken", "n": "!!"},
            {**good, "kid": "k" * 100, "n": "!!"},  # logged as skipped, its kid cut to 64
            {**good, "kid": "odd-alg", "alg": 256},  # PyJWT refuses it: skipped
            {k: v for k, v in good.items() if k != "alg"} | {"kid": "no-alg"},
        ]
    }
    clock = FakeClock()
    cache = _cache(_Jwks(document), clock)

    async def run() -> tuple[list[str], Any]:
        try:
            kids = ["no-use", "implicit-sig", "no-alg", "enc", "tls", "hmac", "private", "broken"]
            return await _outcomes(cache, [*kids, "odd-alg"]), await cache.get("no-alg")
        finally:
            await cache.aclose()

    with capture_logs() as logs:
        outcomes, odd = asyncio.run(run())
    skipped = [e["kid"] for e in logs if e["event"] == "jwks_key_skipped"]
    assert skipped == ["broken", "k" * 64, "odd-alg"]
    unknown = "AuthError: token signed with an unknown key"
    assert outcomes == ["JwksKey"] * 3 + [unknown] * 6
    assert odd.alg is None and odd.kty == "RSA"  # no alg declared: any RSA algorithm fits
    assert cache.status()["keys"] == 3


@pytest.mark.parametrize(
    ("document", "error"),
    [
        (b"x" * (512 * 1024 + 1), "ValueError: JWKS document is too large"),
        ({"keys": {"a": 1}}, "ValueError: JWKS document has no 'keys' list"),
        ([1, 2], "ValueError: JWKS document has no 'keys' list"),
        (b"not json", "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"),
    ],
)
def test_a_bad_jwks_document_is_a_failed_fetch(document, error):
    cache = _cache(_Jwks(document), FakeClock())

    async def run() -> list[str]:
        try:
            return await _outcomes(cache, ["k"])
        finally:
            await cache.aclose()

    assert asyncio.run(run()) == [
        "AuthUnavailable: signing keys are unavailable; try again shortly"
    ]
    assert cache.status()["status"] == "unavailable" and cache.last_error == error


def test_a_jwks_document_of_exactly_the_cap_is_read(own_issuer):
    body = json.dumps({"keys": [own_issuer.keys[0].public_jwk]}).encode()
    padded = body[:-1] + b" " * (512 * 1024 - len(body)) + b"}"
    cache = _cache(_Jwks(padded), FakeClock())

    async def run() -> list[str]:
        try:
            return await _outcomes(cache, [own_issuer.keys[0].kid])
        finally:
            await cache.aclose()

    assert len(padded) == 512 * 1024 and asyncio.run(run()) == ["JwksKey"]


def test_the_identity_provider_status_as_health_reports_it(own_issuer):
    jwks = _Jwks({"keys": [own_issuer.keys[0].public_jwk]})
    clock = FakeClock()
    cache = _cache(jwks, clock, ttl=600, cooldown=60, max_stale=3600)

    async def run() -> list[tuple[object, ...]]:
        seen = []

        def note() -> None:
            s = cache.status()
            seen.append((s["status"], s["keys"], s["keys_age_seconds"], s["last_error"]))

        try:
            note()  # never fetched
            await cache.ensure_fetched()
            note()
            clock.advance(600.04)  # past the TTL, not refetched yet: still ok
            note()
            jwks.status = 503
            await cache.ensure_fetched()  # the refetch fails: stale keys are served
            note()
            clock.advance(3000)  # 3600.04 s old: past max_stale
            note()
        finally:
            await cache.aclose()
        return seen

    error = (
        "HTTPStatusError: Server error '503 Service Unavailable' for url 'https://idp.test/jwks'"
    )
    assert asyncio.run(run()) == [
        ("unavailable", 0, None, None),
        ("ok", 1, 0.0, None),
        ("ok", 1, 600.0, None),
        ("stale", 1, 600.0, error),
        ("unavailable", 0, 3600.0, error),
    ]
    assert cache.status()["jwks_url"] == "https://idp.test/jwks"


def test_a_failed_refetch_while_the_keys_are_fresh_is_not_stale(own_issuer):
    jwks = _Jwks({"keys": [own_issuer.keys[0].public_jwk]})
    clock = FakeClock()
    cache = _cache(jwks, clock, ttl=600, cooldown=60)

    async def run() -> None:
        try:
            await cache.get(own_issuer.keys[0].kid)
            jwks.status = 503
            # Exactly the TTL (still fresh); an unknown kid, past the cooldown: it is
            # refetched, and that fails.
            clock.advance(600)
            with pytest.raises(AuthError, match="unknown key"):
                await cache.get("new-kid")
        finally:
            await cache.aclose()

    asyncio.run(run())
    status = cache.status()
    assert (status["status"], status["keys_age_seconds"]) == ("ok", 600.0)
    assert str(status["last_error"]).startswith("HTTPStatusError")


def test_the_reported_fetch_error_is_one_line_of_at_most_300_characters():
    url = "https://idp.test/" + "x" * 400
    jwks = _Jwks({})
    jwks.status = 500
    cache = JwksCache(url, clock=FakeClock(), transport=jwks.transport)

    async def run() -> None:
        try:
            await cache.ensure_fetched()
        finally:
            await cache.aclose()

    asyncio.run(run())
    error = str(cache.last_error)
    assert len(error) == 300 and "\n" not in error
    assert error.startswith("HTTPStatusError: Server error '500 Internal Server Error'")


def test_refetch_timing_ttl_and_cooldown_boundaries(own_issuer):
    kid = own_issuer.keys[0].kid
    jwks = _Jwks({"keys": [own_issuer.keys[0].public_jwk]})
    # The monotonic clock counts from boot: started at 10 s, a time since an event
    # is not also the remainder of the clock by that event's time.
    clock = FakeClock(start=10.0)
    cache = _cache(jwks, clock, ttl=100, cooldown=10, max_stale=1000)

    async def run() -> list[int]:
        counts = []

        async def get(kid_: str, advance: float = 0.0) -> None:
            clock.advance(advance)
            with contextlib.suppress(AuthError):
                await cache.get(kid_)
            counts.append(jwks.requests)

        try:
            await get(kid)  # first fetch
            await get(kid, 100)  # exactly the TTL: still fresh
            await get(kid, 0.5)  # past it: refetched
            await get("unknown", 9.9)  # unknown kid within the cooldown: no refetch
            await get("unknown", 0.1)  # cooldown over: one refetch
            await get("unknown")  # and not again at once
            jwks.status = 503
            await get(kid, 100.5)  # expired: the refetch fails, stale keys serve
            await get(kid, 9.9)  # after a failure: once per cooldown ...
            await get(kid, 0.1)  # ... not sooner
            jwks.status = 200
            await get(kid, 10)  # back: refetched and fresh again
            await get(kid, 50)
        finally:
            await cache.aclose()
        return counts

    assert asyncio.run(run()) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 6]


def test_ensure_fetched_never_raises_and_respects_the_cooldown(own_issuer):
    jwks = _Jwks({"keys": [own_issuer.keys[0].public_jwk]})
    jwks.status = 500
    clock = FakeClock(start=10.0)  # as in the test above
    cache = _cache(jwks, clock, ttl=100, cooldown=10)

    async def run() -> list[int]:
        counts = []
        try:
            for advance in (0, 5, 5, 0):
                clock.advance(advance)
                await cache.ensure_fetched()
                counts.append(jwks.requests)
            jwks.status = 200
            clock.advance(10)
            await cache.ensure_fetched()
            await cache.ensure_fetched()  # fresh: nothing to do
            counts.append(jwks.requests)
        finally:
            await cache.aclose()
        return counts

    assert asyncio.run(run()) == [1, 1, 2, 2, 3]
    assert cache.status()["status"] == "ok"


def _ec_token(dev: DevIssuer, kid: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    payload = {"iss": dev.issuer, "sub": "u", "aud": AUDIENCE, "iat": now, "exp": now + 600}
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})


def test_a_tokens_algorithm_must_fit_its_key(own_issuer):
    rsa_key = own_issuer.keys[0]
    declared = rsa_key.public_jwk  # declares "alg": "RS256"
    undeclared = {k: v for k, v in declared.items() if k != "alg"} | {"kid": "no-alg"}
    declares_ps = undeclared | {"kid": "ps-only", "alg": "PS256"}
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec_public, as_dict=True) | {"kid": "ec-no-alg"}
    jwks = _Jwks({"keys": [declared, undeclared, declares_ps, ec_jwk]})
    clock = FakeClock()
    validator = TokenValidator(
        _cache(jwks, clock), issuer=own_issuer.issuer, audience=AUDIENCE,
        algorithms=["RS256", "PS256", "ES256"], clock=clock, wall_clock=clock.wall,
    )  # fmt: skip
    no_alg_key, ps_key, ec_kid = (SigningKey(kid=k) for k in ("no-alg", "ps-only", "ec-no-alg"))
    no_alg_key.private_key = ps_key.private_key = ec_kid.private_key = rsa_key.private_key
    tokens = [
        own_issuer.mint(sub="rs"),
        own_issuer.mint(sub="ps-declared", algorithm="PS256"),  # the JWK says RS256
        own_issuer.mint(sub="ps-undeclared", algorithm="PS256", key=no_alg_key),
        _ec_token(own_issuer, "no-alg"),  # an EC algorithm with an RSA key
        own_issuer.mint(sub="rs-declared-ps", key=ps_key),  # the JWK says PS256
        own_issuer.mint(sub="rs-for-ec", key=ec_kid),  # an RSA algorithm with an EC key
    ]
    results = asyncio.run(_validate_all(validator, tokens))
    mismatch = "token algorithm does not match its key"
    assert [getattr(r, "sub", str(r)) for r in results] == [
        "rs",
        mismatch,
        "ps-undeclared",
        mismatch,
        mismatch,
        mismatch,
    ]


# -- header and claim rules, at their edges --------------------------------------------


def test_header_edges(own_issuer):
    cases = {
        "kid_256": (own_issuer, {"kid": "k" * 256}, "token signed with an unknown key"),
        "kid_257": (own_issuer, {"kid": "k" * 257}, "token has no key id"),
        "kid_empty": (own_issuer, {"kid": ""}, "token has no key id"),
        "typ_at_jwt": (own_issuer, {"typ": "at+JWT"}, None),
        "typ_media_type": (own_issuer, {"typ": "application/at+jwt"}, None),
        "typ_not_a_string": (own_issuer, {"typ": 1}, "not an access token"),
        "x5u": (own_issuer, {"x5u": "https://evil.example/cert"}, "token header not accepted"),
    }
    tokens = [own_issuer.mint(headers=headers) for _, headers, _ in cases.values()]
    # PyJWT will not sign with a number as kid, nor read one: built by hand, refused.
    cases["kid_number"] = (own_issuer, {}, "malformed token")
    tokens.append(raw_token({"alg": "RS256", "kid": 7}, claims(own_issuer), b"x" * 256))
    results = validate(own_issuer, *tokens)
    got = {
        name: None if isinstance(r, Principal) else str(r)
        for name, r in zip(cases, results, strict=True)
    }
    assert got == {name: expected for name, (_, _, expected) in cases.items()}


def test_claim_edges(own_issuer):
    cases = {
        "sub_1": ({"sub": "s"}, "s"),
        "sub_empty": ({"sub": ""}, "token subject is invalid"),
        "sub_256": ({"sub": "s" * 256}, "s" * 256),
        "sub_257": ({"sub": "s" * 257}, "token subject is invalid"),
        "permissions_not_a_list": ({"permissions": "read:analytics"}, "token scopes are malformed"),
        "c_hash": (
            {"c_hash": "LDktKdoQak3Pk0cnXxCltA"},
            "ID tokens are not accepted; send an access token for this API",
        ),
        "azp_not_a_string": ({"azp": 42}, "token client id is malformed"),
        # JSON's Infinity: PyJWT's int(iat) overflows; a 401, never a 500.
        "iat_infinite": ({"iat": float("inf")}, "invalid token"),
    }
    tokens = [signed(own_issuer, claims(own_issuer, **extra)) for extra, _ in cases.values()]
    results = validate(own_issuer, *tokens)
    got = {
        name: r.sub if isinstance(r, Principal) else str(r)
        for name, r in zip(cases, results, strict=True)
    }
    assert got == {name: expected for name, (_, expected) in cases.items()}


def test_scopes_and_the_client_id_from_the_claims(own_issuer):
    tokens = [
        signed(own_issuer, claims(own_issuer, azp=None, client_id="cli", permissions=["p", 7])),
        signed(own_issuer, claims(own_issuer, sub="svc@clients", azp="explicit")),
        signed(own_issuer, claims(own_issuer, sub="human", azp=None, scope=None)),
    ]
    a, b, c = validate(own_issuer, *tokens)
    assert isinstance(a, Principal) and a.app == "cli"
    assert a.scopes == {"read:analytics", "read:schema", "p"}  # the non-string permission dropped
    assert isinstance(b, Principal) and b.app == "explicit"
    assert isinstance(c, Principal) and (c.app, c.scopes) == (None, frozenset())


def _signature_checks(dev: DevIssuer, tokens: list[str], **options: Any) -> list[int]:
    """Validates `tokens` in turn on a fresh validator (options: the validator's);
    the count of full validations after each."""

    async def run() -> list[int]:
        clock = FakeClock()
        validator = TokenValidator(
            JwksCache(dev.jwks_url, clock=clock), issuer=dev.issuer, audience=AUDIENCE,
            algorithms=["RS256"], clock=clock, wall_clock=clock.wall, **options,
        )  # fmt: skip
        checks = count_signature_checks(validator)
        seen = []
        try:
            for token in tokens:
                await validator.validate(token)
                seen.append(checks[0])
        finally:
            await validator.jwks.aclose()
        return seen

    return asyncio.run(run())


def test_a_token_used_again_is_the_last_one_the_cache_forgets(own_issuer):
    a, b, c = (own_issuer.mint(sub=s) for s in "abc")
    # "a" used again makes "b" the least recent: "c" evicts "b", and "a" is still remembered.
    assert _signature_checks(own_issuer, [a, b, a, c, a], cache_entries=2) == [1, 2, 2, 3, 3]


def test_a_token_accepted_only_within_the_leeway_is_not_remembered(own_issuer):
    late = own_issuer.mint(ttl=-2)  # expired 2 s ago: accepted (leeway 5 s), never cached
    assert _signature_checks(own_issuer, [late] * 3, leeway=5) == [1, 2, 3]


def test_with_no_cache_entries_every_request_is_verified(own_issuer):
    assert _signature_checks(own_issuer, [own_issuer.mint()] * 3, cache_entries=0) == [1, 2, 3]


def test_stale_keys_serve_up_to_max_stale_inclusive_and_their_age_has_one_decimal(own_issuer):
    jwks = _Jwks({"keys": [own_issuer.keys[0].public_jwk]})
    clock = FakeClock()
    cache = _cache(jwks, clock, ttl=600, cooldown=60, max_stale=3600)

    async def run() -> list[tuple[object, ...]]:
        seen = []
        try:
            await cache.ensure_fetched()
            jwks.status = 503
            for advance in (3599.75, 0.25, 0.5):  # to just before, exactly at, past max_stale
                clock.advance(advance)
                await cache.ensure_fetched()
                status = cache.status()
                seen.append((status["status"], status["keys"], status["keys_age_seconds"]))
        finally:
            await cache.aclose()
        return seen

    assert asyncio.run(run()) == [
        ("stale", 1, 3599.8),
        ("stale", 1, 3600.0),
        ("unavailable", 0, 3600.5),
    ]


def test_one_cache_entry_remembers_one_token(own_issuer):
    token = own_issuer.mint()
    assert _signature_checks(own_issuer, [token] * 2, cache_entries=1) == [1, 1]


def test_a_token_accepted_within_the_leeway_does_not_evict_a_remembered_one(own_issuer):
    good, late = own_issuer.mint(sub="good"), own_issuer.mint(sub="late", ttl=-2)
    checks = _signature_checks(own_issuer, [good, late, good], cache_entries=1, leeway=5)
    assert checks == [1, 2, 2]


def test_a_four_part_token_is_malformed(own_issuer):
    token = own_issuer.mint()
    assert [str(r) for r in validate(own_issuer, token + ".e30")] == ["malformed token"]


def test_the_defaults_are_the_documented_settings(own_issuer):
    """Built without options, the cache and validator behave as the API's settings
    documented defaults say (JWKS 600 s, refetch cooldown 60 s, stale keys 24 h,
    leeway 30 s)."""
    from api_service.settings import ApiSettings

    fields = ApiSettings.model_fields
    cache = JwksCache("https://idp.test/jwks")
    validator = TokenValidator(cache, issuer="i", audience="a", algorithms=["RS256"])
    assert cache._client.timeout == httpx.Timeout(5.0)  # a hung JWKS endpoint: 5 s at most
    assert (
        (cache.ttl, cache.cooldown, cache.max_stale, validator.leeway)
        == (
            fields["jwks_cache_seconds"].default,
            fields["jwks_refetch_cooldown_seconds"].default,
            fields["jwks_max_stale_seconds"].default,
            fields["jwt_leeway_seconds"].default,
        )
        == (600, 60, 86_400, 30)
    )
    asyncio.run(cache.aclose())


def test_ensure_fetched_does_not_wait_behind_a_fetch_in_progress(own_issuer):
    """/health calls ensure_fetched: a hung identity provider must not hang it."""
    document = {"keys": [own_issuer.keys[0].public_jwk]}

    async def run() -> None:
        release = asyncio.Event()

        async def slow(request: httpx.Request) -> httpx.Response:
            await release.wait()
            return httpx.Response(200, json=document)

        cache = JwksCache(
            "https://idp.test/jwks", clock=FakeClock(), transport=httpx.MockTransport(slow)
        )
        try:
            fetch = asyncio.create_task(cache.get(own_issuer.keys[0].kid))
            while not cache._lock.locked():
                await asyncio.sleep(0)
            await asyncio.wait_for(cache.ensure_fetched(), timeout=1.0)
            assert not fetch.done()
            release.set()
            await fetch
        finally:
            await cache.aclose()

    asyncio.run(run())


def test_an_expiry_refetches_at_once_even_within_the_cooldown(own_issuer):
    """JWKS_CACHE_SECONDS may be shorter than the refetch cooldown: the cooldown
    only spaces refetches after a failure, never a normal expiry."""
    kid = own_issuer.keys[0].kid
    jwks = _Jwks({"keys": [own_issuer.keys[0].public_jwk]})
    clock = FakeClock()
    cache = _cache(jwks, clock, ttl=5, cooldown=60)

    async def run() -> list[int]:
        counts = []
        try:
            for advance in (0, 5.5, 5.5):
                clock.advance(advance)
                await cache.get(kid)
                counts.append(jwks.requests)
        finally:
            await cache.aclose()
        return counts

    assert asyncio.run(run()) == [1, 2, 3]


def test_a_request_during_a_refetch_waits_for_its_keys(own_issuer):
    """A key removed from the JWKS is refused from the moment the refetch that
    removes it ends, also for a request that arrived while it ran."""
    old_key, new_key = own_issuer.keys[0].public_jwk, SigningKey(kid="new").public_jwk
    document = {"keys": [old_key]}

    async def run() -> object:
        release = asyncio.Event()

        async def serve(request: httpx.Request) -> httpx.Response:
            if document["keys"] == [new_key]:
                await release.wait()
            return httpx.Response(200, json=document)

        clock = FakeClock()
        cache = JwksCache(
            "https://idp.test/jwks", clock=clock, transport=httpx.MockTransport(serve)
        )
        try:
            await cache.get(old_key["kid"])
            document["keys"] = [new_key]  # rotated: the old key is gone
            clock.advance(60)  # past the cooldown: the unknown kid "new" is refetched
            refetch = asyncio.create_task(cache.get("new"))
            while not cache._lock.locked():
                await asyncio.sleep(0)
            during = asyncio.create_task(cache.get(old_key["kid"]))
            await asyncio.sleep(0.05)
            release.set()
            await refetch
            try:
                return await during
            except AuthError as exc:
                return str(exc)
        finally:
            await cache.aclose()

    assert asyncio.run(run()) == "token signed with an unknown key"


def _wall_validator(dev: DevIssuer, clock: FakeClock, wall: list[float], **options: Any):
    validator = TokenValidator(
        JwksCache(dev.jwks_url, clock=clock), issuer=dev.issuer, audience=AUDIENCE,
        algorithms=["RS256"], clock=clock, wall_clock=lambda: wall[0], **options,
    )  # fmt: skip
    return validator, count_signature_checks(validator)


def test_the_cache_ends_exactly_at_sixty_seconds_and_exactly_at_exp(own_issuer):
    clock, wall = FakeClock(), [time.time()]
    token = own_issuer.mint(ttl=3600)
    exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])

    async def run() -> list[int]:
        validator, checks = _wall_validator(own_issuer, clock, wall)
        seen = []
        try:
            for advance, at in ((0, wall[0]), (60, wall[0]), (0, exp - 1), (0, exp)):
                clock.advance(advance)
                wall[0] = at
                await validator.validate(token)
                seen.append(checks[0])
        finally:
            await validator.jwks.aclose()
        return seen

    # Verified; exactly 60 s later verified again (and remembered anew); one second
    # before exp from the cache; exactly at exp verified again.
    assert asyncio.run(run()) == [1, 2, 2, 3]


def test_a_token_at_its_exp_exactly_is_not_remembered(own_issuer):
    clock = FakeClock()
    good, ending = own_issuer.mint(sub="good"), own_issuer.mint(sub="ending", ttl=30)
    wall = [float(jwt.decode(ending, options={"verify_signature": False})["exp"])]

    async def run() -> list[int]:
        validator, checks = _wall_validator(own_issuer, clock, wall, cache_entries=1)
        seen = []
        try:
            for token in (good, ending, good):
                await validator.validate(token)
                seen.append(checks[0])
        finally:
            await validator.jwks.aclose()
        return seen

    assert asyncio.run(run()) == [1, 2, 2]  # "ending" took no cache entry from "good"


def test_a_one_character_kid_is_a_key_id(own_issuer):
    (result,) = validate(own_issuer, own_issuer.mint(headers={"kid": "k"}))
    assert str(result) == "token signed with an unknown key"
