"""/health reports the identity provider: not ready (503) while no signing keys
were ever fetched, degraded (200, and on /metrics) while tokens are checked
against stale keys because the key set cannot be fetched."""

from __future__ import annotations

import time

from api_service.dev.issuer import DevIssuer
from testsupport.api_app import api_env, make_app_client

AUDIENCE = "https://identity-health.test"
WHITELIST = {"policies": {"default": {"tables": ["*"]}}}


def test_health_follows_the_identity_provider(tmp_path):
    with DevIssuer(audience=AUDIENCE) as idp:
        idp.fail_jwks = True  # down from the start
        env = api_env(
            tmp_path,
            idp,
            WHITELIST,
            JWKS_CACHE_SECONDS="1",
            JWKS_REFETCH_COOLDOWN_SECONDS="0",
        )
        with make_app_client(env, wait_for_data=False) as client:
            r = client.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "starting"
            assert body["identity_provider"]["status"] == "unavailable"
            assert "no signing keys could be fetched" in body["message"]
            # Unauthenticated: no endpoints or error texts (a token cannot be checked yet).
            assert idp.jwks_url not in r.text and "last_error" not in body["identity_provider"]

            idp.fail_jwks = False  # it recovers: the next /health fetches the keys
            r = client.get("/health")
            assert r.status_code == 200 and r.json()["status"] == "ok", r.json()
            status_token = idp.mint(sub="ops", scopes="read:status")
            details = client.get("/health", headers={"Authorization": f"Bearer {status_token}"})
            assert details.json()["identity_provider"]["jwks_url"] == idp.jwks_url

            idp.fail_jwks = True  # down again: the keys age past JWKS_CACHE_SECONDS
            time.sleep(1.5)
            r = client.get("/health")
            assert r.status_code == 200
            assert r.json()["status"] == "degraded"
            assert r.json()["identity_provider"]["status"] == "stale"
            metrics = client.get("/metrics").text
            assert "api_identity_keys_stale" in metrics
            stale_lines = [
                line for line in metrics.splitlines() if line.startswith("api_identity_keys_stale{")
            ]
            assert stale_lines and stale_lines[0].endswith(" 1.0")
