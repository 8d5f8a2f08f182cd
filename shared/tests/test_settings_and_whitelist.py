from __future__ import annotations

import json

import pytest

from analytics_shared.settings import SettingsError, load_settings
from analytics_shared.whitelist import WhitelistError, load_whitelist
from api_service.settings import ApiSettings
from etl_service.settings import EtlSettings


def test_invalid_values_name_the_variable_and_hide_the_value(monkeypatch):
    monkeypatch.setenv("SYNC_INTERVAL_SECONDS", "soon")
    monkeypatch.setenv("MSSQL_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("MSSQL_PORT", "99999")
    with pytest.raises(SettingsError) as err:
        load_settings(EtlSettings)
    message = str(err.value)
    assert "SYNC_INTERVAL_SECONDS" in message and "MSSQL_PORT" in message
    assert "soon" not in message and "hunter2" not in message


def test_tables_to_sync_is_a_comma_list(monkeypatch):
    monkeypatch.setenv("TABLES_TO_SYNC", "inventory, orders ,customers")
    assert load_settings(EtlSettings).tables_to_sync == ["inventory", "orders", "customers"]


def test_source_url_from_mssql_parts_escapes_the_password(monkeypatch):
    for k, v in {
        "MSSQL_HOST": "db",
        "MSSQL_DATABASE": "ops",
        "MSSQL_USERNAME": "etl",
        "MSSQL_PASSWORD": "p@ss/word",
    }.items():
        monkeypatch.setenv(k, v)
    url = load_settings(EtlSettings).resolved_source_url
    assert url == "mssql+pymssql://etl:p%40ss%2Fword@db:1433/ops?encryption=require"


def test_storage_url_falls_back_to_seed_s3_bucket(monkeypatch):
    monkeypatch.setenv("S3_BUCKET", "analytics-prod")
    monkeypatch.setenv("S3_PREFIX", "v1")
    assert load_settings(EtlSettings).resolved_storage_url == "s3://analytics-prod/v1"


def test_api_refuses_symmetric_algorithms_and_missing_auth(monkeypatch):
    monkeypatch.setenv("AUTH0_DOMAIN", "tenant.eu.auth0.com")
    monkeypatch.setenv("AUTH0_API_AUDIENCE", "https://api")
    monkeypatch.setenv("AUTH0_ALGORITHMS", "HS256")
    with pytest.raises(SettingsError, match="AUTH0_ALGORITHMS"):
        load_settings(ApiSettings)
    monkeypatch.delenv("AUTH0_ALGORITHMS")
    settings = load_settings(ApiSettings)
    assert settings.jwks_url == "https://tenant.eu.auth0.com/.well-known/jwks.json"
    assert settings.issuer == "https://tenant.eu.auth0.com/"
    monkeypatch.delenv("AUTH0_DOMAIN")
    with pytest.raises(SettingsError, match="AUTH0_DOMAIN"):
        load_settings(ApiSettings)


def test_bundled_whitelist_is_valid_and_secure_by_default():
    wl = load_whitelist()
    # Unknown applications are refused; the demo's own issuers are mapped by name.
    assert wl.policy_for("some-unknown-app") is None
    assert wl.policy_for("demo-app") is wl.policies["default"]
    assert wl.policy_for("compose-dev") is wl.policies["default"]
    assert wl.policies["default"].may_read("inventory")
    # No bundled policy serves the customers table (emails, names).
    assert not any(policy.may_read("customers") for policy in wl.policies.values())


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"policies": {}}, "policies"),
        ({"policies": {"default": {"tables": ["inventory; drop"]}}}, "policies/default/tables/0"),
        (
            {"policies": {"default": {"tables": []}}, "apps": {"app1": "missing"}},
            "unknown policies",
        ),
        (
            {"policies": {"default": {"tables": [], "named_queries": ["nope"]}}},
            "unknown named queries",
        ),
        ({"policies": {"default": {"tables": []}}, "surprise": 1}, "surprise"),
        (
            {
                "policies": {"default": {"tables": []}},
                "api_keys": {"svc": {"sha256": "abc", "policy": "default", "scopes": []}},
            },
            "api_keys/svc/sha256",
        ),
        (
            {
                "policies": {"default": {"tables": []}},
                "api_keys": {"svc": {"sha256": "a" * 64, "policy": "nope", "scopes": []}},
            },
            "unknown policies",
        ),
        (
            {
                "policies": {"default": {"tables": []}},
                "api_keys": {"svc": {"sha256": "a" * 64, "policy": "default", "scopes": ["admin"]}},
            },
            "api_keys/svc/scopes/0",
        ),
        (
            {
                "policies": {"default": {"tables": []}},
                "api_keys": {
                    "svc": {
                        "sha256": "a" * 64,
                        "policy": "default",
                        "scopes": [],
                        "expires_at": "next tuesday",
                    }
                },
            },
            "api_keys",
        ),
    ],
)
def test_bad_whitelists_name_the_problem(tmp_path, doc, fragment):
    path = tmp_path / "wl.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(WhitelistError, match=fragment):
        load_whitelist(path)


def test_whitelist_that_is_not_json(tmp_path):
    path = tmp_path / "wl.json"
    path.write_text("{nope")
    with pytest.raises(WhitelistError, match="not JSON"):
        load_whitelist(path)


def test_whitelist_api_keys_section(tmp_path):
    path = tmp_path / "wl.json"
    entry = {"sha256": "b" * 64, "policy": "default", "scopes": ["read:analytics"]}
    path.write_text(
        json.dumps({"policies": {"default": {"tables": ["*"]}}, "api_keys": {"svc": entry}})
    )
    wl = load_whitelist(path)
    assert wl.api_keys["svc"].policy == "default"
    assert wl.api_keys["svc"].scopes == ["read:analytics"]
