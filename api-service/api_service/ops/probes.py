"""`analytics-api check-config --probe`: reach each dependency, one line each.

The identity provider's key set (AUTH0_JWKS_URL or derived from AUTH0_DOMAIN)
and its OpenID metadata (the issuer's `.well-known/openid-configuration`,
whose `issuer` must equal the configured one exactly), the object store (the
current manifest), and Redis when REDIS_URL is set. Exit 0 when all are ok,
1 when one is not.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from analytics_shared.cli_edge import EXIT_FAILURE, one_line
from analytics_shared.manifest import MANIFEST_KEY
from analytics_shared.object_store import ObjectNotFound
from api_service.settings import ApiSettings

__all__ = ["probe_dependencies"]

TIMEOUT_SECONDS = 5.0


def _jwks(settings: ApiSettings) -> str:
    response = httpx.get(settings.jwks_url, timeout=TIMEOUT_SECONDS)
    response.raise_for_status()
    keys = response.json().get("keys")
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"{settings.jwks_url} holds no keys")
    return f"{settings.jwks_url} ({len(keys)} keys)"


def _issuer(settings: ApiSettings) -> str:
    url = settings.issuer + ".well-known/openid-configuration"
    response = httpx.get(url, timeout=TIMEOUT_SECONDS)
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


def _store(settings: ApiSettings) -> str:
    store = settings.open_store()
    try:
        store.get_bytes(MANIFEST_KEY)
        return f"{store.url} (a version is published)"
    except ObjectNotFound:
        return f"{store.url} (nothing published yet: the API answers 503 until the ETL publishes)"


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
    checks: list[tuple[str, str, Callable[[ApiSettings], str]]] = [
        ("jwks", "AUTH0_JWKS_URL / AUTH0_DOMAIN", _jwks),
        ("issuer metadata", "AUTH0_ISSUER / AUTH0_DOMAIN", _issuer),
        ("store", "STORAGE_URL / S3_*", _store),
    ]
    if settings.redis_url:
        checks.append(("redis", "REDIS_URL", _redis))
    failed = 0
    for name, setting, check in checks:
        try:
            print(f"{name}: ok: {check(settings)}", flush=True)
        except Exception as exc:  # each dependency's reason on its own line
            failed += 1
            reason = next(iter(str(exc).strip().splitlines()), "")
            print(
                one_line(f"{name}: FAILED: {type(exc).__name__}: {reason} (check {setting})"),
                flush=True,
            )
    return EXIT_FAILURE if failed else 0
