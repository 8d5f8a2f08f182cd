"""CORS: configured origins only, never a wildcard with credentials."""

from __future__ import annotations

import pytest

from analytics_shared.settings import SettingsError, load_settings
from api_service.settings import ApiSettings
from testsupport.api_app import api_env, make_app_client

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def test_configured_origins_only(tmp_path, issuer):
    env = api_env(
        tmp_path,
        issuer,
        {"policies": {"default": {"tables": ["*"]}}},
        CORS_ORIGINS="https://app.example.com",
    )
    with make_app_client(env, wait_for_data=False) as client:
        ok = client.options("/query", headers={"Origin": "https://app.example.com", **PREFLIGHT})
        assert ok.status_code == 200
        assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert ok.headers["Access-Control-Allow-Credentials"] == "true"
        evil = client.options("/query", headers={"Origin": "https://evil.example.com", **PREFLIGHT})
        assert "Access-Control-Allow-Origin" not in evil.headers
        r = client.get(
            "/query", params={"q": "SELECT 1"}, headers={"Origin": "https://app.example.com"}
        )
        assert r.status_code == 401  # a refused request still tells the browser what happened
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "x-request-id" in r.headers["Access-Control-Expose-Headers"].lower()


def test_a_wildcard_never_comes_with_credentials(tmp_path, issuer):
    env = api_env(tmp_path, issuer, {"policies": {"default": {"tables": ["*"]}}}, CORS_ORIGINS="*")
    with make_app_client(env, wait_for_data=False) as client:
        r = client.options("/query", headers={"Origin": "https://any.example.com", **PREFLIGHT})
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in r.headers


def test_origins_must_be_origins(monkeypatch, auth_env):
    for key, value in auth_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com/path")
    with pytest.raises(SettingsError, match="CORS_ORIGINS"):
        load_settings(ApiSettings)
