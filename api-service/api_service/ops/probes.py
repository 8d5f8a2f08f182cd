"""`analytics-api check-config --probe`: reach each dependency, one line each.

The identity provider's key set (AUTH0_JWKS_URL or derived from AUTH0_DOMAIN)
and its OpenID metadata (the issuer's `.well-known/openid-configuration`,
whose `issuer` must equal the configured one exactly), the object store (the
current manifest), Redis when REDIS_URL is set, and in lake mode the lake (its
process started with LAKE_PYTHON, the catalog read). Exit 0 when all are ok,
1 when one is not.
"""

from __future__ import annotations

import httpx

from analytics_shared.probes import LAKE_SETTINGS, Probe, probe_lake, probe_store, run_probes
from api_service.settings import ApiSettings

__all__ = ["probe_dependencies"]

TIMEOUT_SECONDS = 5.0


def _get(url: str) -> httpx.Response:
    """GET `url`; a failure to reach it names the URL (httpx's own message does not)."""
    try:
        return httpx.get(url, timeout=TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"{url}: {type(exc).__name__}: {exc}") from exc


def _jwks(settings: ApiSettings) -> str:
    response = _get(settings.jwks_url)
    response.raise_for_status()
    keys = response.json().get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"{settings.jwks_url} holds no keys")
    return f"{settings.jwks_url} ({len(keys)} keys)"


def _issuer(settings: ApiSettings) -> str:
    url = settings.issuer + ".well-known/openid-configuration"
    response = _get(url)
    if response.status_code == 404:
        return f"{url} not served (only the key set is used)"
    response.raise_for_status()
    named = response.json().get("issuer")
    if named != settings.issuer:
        raise ValueError(
            f"{url} names the issuer {named!r}, not {settings.issuer!r}: tokens would be"
            " refused; set AUTH0_ISSUER (or AUTH0_DOMAIN) to match"
        )
    return url


def _redis(settings: ApiSettings) -> str:
    import redis

    assert settings.redis_url
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=TIMEOUT_SECONDS)
    try:
        client.ping()
    finally:
        client.close()
    pool = client.connection_pool.connection_kwargs
    return f"redis at {pool.get('host', '?')}:{pool.get('port', '?')}"


def probe_dependencies(settings: ApiSettings) -> int:
    probes: list[Probe] = [
        ("jwks", "AUTH0_JWKS_URL / AUTH0_DOMAIN", lambda: _jwks(settings)),
        ("issuer metadata", "AUTH0_ISSUER / AUTH0_DOMAIN", lambda: _issuer(settings)),
        ("store", "STORAGE_URL / S3_*", lambda: probe_store(settings.open_store())),
    ]
    if settings.redis_url:
        probes.append(("redis", "REDIS_URL", lambda: _redis(settings)))
    if settings.publish_mode == "lake":
        catalog = settings.lake_catalog_url
        url = catalog.get_secret_value() if catalog else None
        probes.append(("lake", LAKE_SETTINGS, lambda: probe_lake(settings, url)))
    return run_probes(probes)
