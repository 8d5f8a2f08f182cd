"""API keys: opt-in, stored as hashes, bound to a policy and scopes."""

from __future__ import annotations

import pytest

from analytics_shared.whitelist import Whitelist
from api_service.auth.api_keys import authenticate_api_key, generate_api_key, hash_api_key
from api_service.errors import AuthError
from testsupport.api_app import api_env, make_app_client

KEY, KEY_HASH = generate_api_key("reporting")
SCHEMA_KEY, SCHEMA_KEY_HASH = generate_api_key("schema-only")
OLD_KEY, OLD_KEY_HASH = generate_api_key("retired")

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
    },
}


def test_keys_are_stored_only_as_hashes():
    assert KEY.startswith("ak.reporting.") and len(KEY) > 50
    assert hash_api_key(KEY) == KEY_HASH and KEY not in str(WHITELIST)


@pytest.mark.parametrize(
    "presented",
    [
        KEY[:-1] + ("A" if KEY[-1] != "A" else "B"),  # wrong secret
        KEY.replace("reporting", "unknown"),  # unknown id
        "ak.reporting",  # no secret
        "Bearer " + KEY,  # wrong format
        "",  # empty
        "ak.reporting." + "x" * 5000,  # oversized
        OLD_KEY,  # expired
    ],
)
def test_bad_keys_are_refused(presented):
    with pytest.raises(AuthError):
        authenticate_api_key(presented, Whitelist.model_validate(WHITELIST))


def test_a_good_key_yields_its_policy_and_scopes():
    principal = authenticate_api_key(KEY, Whitelist.model_validate(WHITELIST))
    assert principal.sub == "apikey:reporting" and principal.policy == "reports"
    assert principal.scopes == {"read:analytics"} and principal.auth_method == "api_key"


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
        refused = client.get(
            "/query", params={"q": "SELECT * FROM inventory"}, headers={"X-API-Key": KEY}
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "table_not_allowed"
        no_scope = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": SCHEMA_KEY})
        assert no_scope.status_code == 403
        assert client.get("/schema", headers={"X-API-Key": SCHEMA_KEY}).status_code == 200
        bad = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": KEY + "x"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        assert "WWW-Authenticate" in bad.headers
        expired = client.get("/query", params={"q": "SELECT 1"}, headers={"X-API-Key": OLD_KEY})
        assert expired.status_code == 401
