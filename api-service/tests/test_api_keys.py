"""API keys: opt-in, stored as hashes, bound to a policy and scopes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from analytics_shared.whitelist import Whitelist
from api_service.auth.api_keys import authenticate_api_key, generate_api_key, hash_api_key
from api_service.errors import AuthError
from testsupport.api_app import api_env, make_app_client

KEY, KEY_HASH = generate_api_key("reporting")
SCHEMA_KEY, SCHEMA_KEY_HASH = generate_api_key("schema-only")
OLD_KEY, OLD_KEY_HASH = generate_api_key("retired")
NEW_KEY, NEW_KEY_HASH = generate_api_key("rotated-in")

WHITELIST = {
    "policies": {
        "default": {"tables": ["inventory", "orders"]},
        "reports": {"tables": ["orders"]},
    },
    "api_keys": {
        "reporting": {"sha256": KEY_HASH, "policy": "reports", "scopes": ["read:analytics"]},
        "schema-only": {"sha256": SCHEMA_KEY_HASH, "policy": "default", "scopes": ["read:schema"]},
        "retired": {
            "sha256": OLD_KEY_HASH,
            "policy": "default",
            "scopes": ["read:analytics"],
            "expires_at": "2020-01-01T00:00:00Z",
        },
        "rotated-in": {
            "sha256": NEW_KEY_HASH,
            "policy": "default",
            "scopes": ["read:analytics"],
            "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        },
    },
}


def test_keys_are_stored_only_as_hashes():
    # the documented form: ak.<id>.<secret>, the secret 256 random bits (43 base64url
    # characters), stored as the hex SHA-256 of the whole key
    prefix, key_id, secret = KEY.split(".")
    assert (prefix, key_id, len(secret)) == ("ak", "reporting", 43)
    assert KEY_HASH == hashlib.sha256(KEY.encode()).hexdigest() == hash_api_key(KEY)
    assert generate_api_key("reporting")[0] != KEY  # a fresh secret each time
    # the plain key is refused where its hash belongs: the whitelist holds no secret
    plain = {**WHITELIST["api_keys"]["reporting"], "sha256": KEY}
    whitelist = Whitelist.model_validate({**WHITELIST, "api_keys": {"reporting": plain}})
    with pytest.raises(AuthError, match="invalid API key"):
        authenticate_api_key(KEY, whitelist)


@pytest.mark.parametrize(
    ("presented", "message"),
    [
        (KEY[:-1] + ("A" if KEY[-1] != "A" else "B"), "invalid API key"),  # wrong secret
        (KEY.replace("reporting", "schema-only"), "invalid API key"),  # another id's entry
        (KEY.replace("reporting", "unknown"), "invalid API key"),  # unknown id
        ("ak.reporting", "invalid API key"),  # no secret
        ("Bearer " + KEY, "invalid API key"),  # wrong format
        ("", "invalid API key"),  # empty
        (KEY + "x" * 5000, "invalid API key"),  # oversized, the real key as its prefix
        (OLD_KEY, "API key expired"),  # the right secret, past its expires_at
    ],
    # fixed ids: the keys are random, and parallel workers must collect the same tests
    ids=[
        "wrong-secret",
        "other-id",
        "unknown-id",
        "no-secret",
        "bearer",
        "empty",
        "oversized",
        "expired",
    ],
)
def test_bad_keys_are_refused(presented, message):
    with pytest.raises(AuthError) as refused:
        authenticate_api_key(presented, Whitelist.model_validate(WHITELIST))
    assert (refused.value.code, str(refused.value)) == ("invalid_api_key", message)


def test_a_good_key_yields_its_policy_and_scopes():
    whitelist = Whitelist.model_validate(WHITELIST)
    principal = authenticate_api_key(KEY, whitelist)
    assert principal.sub == principal.app == "apikey:reporting"
    assert principal.policy == "reports" and principal.auth_method == "api_key"
    assert principal.scopes == {"read:analytics"}
    # an expiry in the future is no refusal
    rotated = authenticate_api_key(NEW_KEY, whitelist)
    assert (rotated.sub, rotated.policy) == ("apikey:rotated-in", "default")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("apikeys")


def test_api_keys_are_ignored_unless_enabled(root, issuer):
    env = api_env(root / "off", issuer, WHITELIST)
    with make_app_client(env) as client:
        r = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": KEY})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_enabled_api_keys_follow_their_policy_and_scopes(root, issuer):
    env = api_env(root / "on", issuer, WHITELIST, API_KEYS_ENABLED="true")
    with make_app_client(env) as client:
        ok = client.get(
            "/query", params={"q": "SELECT count(*) AS n FROM orders"}, headers={"X-API-Key": KEY}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["data"] == [{"n": 200}]  # the test snapshot's orders
        refused = client.get(
            "/query", params={"q": "SELECT * FROM inventory"}, headers={"X-API-Key": KEY}
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "table_not_allowed"
        no_scope = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": SCHEMA_KEY})
        assert no_scope.status_code == 403
        assert no_scope.json()["error"]["code"] == "insufficient_scope"
        schema = client.get("/schema", headers={"X-API-Key": SCHEMA_KEY})
        assert schema.status_code == 200, schema.text
        assert set(schema.json()["tables"]) == {"inventory", "orders"}  # its policy's tables
        bad = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": KEY + "x"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        assert "WWW-Authenticate" in bad.headers
        expired = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": OLD_KEY})
        assert expired.status_code == 401
        assert expired.json()["error"] | {"request_id": None} == {
            "code": "invalid_api_key",
            "message": "API key expired",
            "request_id": None,
        }
