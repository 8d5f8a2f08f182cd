"""API keys: an opt-in fallback for identity-provider outages and service accounts.

Keys live in the query whitelist's `api_keys` section as SHA-256 hashes only,
each bound to a policy and scopes, and are accepted only when
`API_KEYS_ENABLED=true`. A key looks like `ak.<id>.<secret>`: the id selects
the entry (it is not secret), the hash of the whole key is compared in
constant time. The secret has 256 bits of entropy, so a fast hash is enough
(no password stretching needed). Make one with:

    python -m api_service.auth.api_keys new <id>
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from datetime import UTC, datetime

from analytics_shared.whitelist import ApiKeyEntry, Whitelist
from api_service.auth.principal import Principal
from api_service.errors import InvalidApiKey

__all__ = ["API_KEY_HEADER", "authenticate_api_key", "generate_api_key", "hash_api_key"]

API_KEY_HEADER = "X-API-Key"
_PREFIX = "ak"
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_api_key(key_id: str) -> tuple[str, str]:
    """A new key and the hash to store under `api_keys.<key_id>.sha256`."""
    key = f"{_PREFIX}.{key_id}.{secrets.token_urlsafe(32)}"
    return key, hash_api_key(key)


def authenticate_api_key(key: str, whitelist: Whitelist) -> Principal:
    prefix, _, rest = key.partition(".")
    key_id, _, secret = rest.partition(".")
    entry: ApiKeyEntry | None = None
    if prefix == _PREFIX and key_id and secret and len(key) <= 256:
        entry = whitelist.api_keys.get(key_id)
    # Hash and compare even for unknown ids, so timing does not tell which ids exist.
    expected = entry.sha256 if entry is not None else _DUMMY_HASH
    matches = hmac.compare_digest(hash_api_key(key[:256]), expected)
    if entry is None or not matches:
        raise InvalidApiKey("invalid API key")
    if entry.expires_at is not None:
        expires = entry.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise InvalidApiKey("API key expired")
    return Principal(
        sub=f"apikey:{key_id}",
        app=f"apikey:{key_id}",
        scopes=frozenset(entry.scopes),
        policy=entry.policy,
        auth_method="api_key",
    )


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "new":
        print("usage: python -m api_service.auth.api_keys new <id>", file=sys.stderr)
        return 2
    key, digest = generate_api_key(argv[1])
    print(f"key (give to the caller, shown once): {key}")
    print(f'whitelist entry: "{argv[1]}": {{"sha256": "{digest}", "policy": "default",')
    print('                  "scopes": ["read:analytics"]}')
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
