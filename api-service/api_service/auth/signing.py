"""Tamper-proof tokens the API hands out and takes back: page cursors and
event tickets. A token is `base64url(JSON payload) "." base64url(HMAC-SHA256)`;
the payload is readable, never secret, and nothing in it is trusted unless the
signature matches.

The key is `API_SIGNING_SECRET`; without it each host makes a random one in
its cache directory, shared by its Gunicorn workers (so a cursor from one
worker works on its siblings). Several hosts behind one load balancer need the
same `API_SIGNING_SECRET`.

What must always hold: `verify()` compares signatures in constant time and
answers a payload only when the signature is the key's; a token signed for
one purpose (`kind`) is refused for another.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

import orjson

__all__ = ["BadSignature", "Signer", "signing_key"]

_KEY_FILE = "signing.key"


class BadSignature(ValueError):
    """The token is malformed, altered, or signed with another key or kind."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the signing key must be at least 16 bytes")
        self._key = key

    def _mac(self, kind: str, body: bytes) -> bytes:
        return hmac.new(self._key, kind.encode() + b"\x00" + body, hashlib.sha256).digest()

    def sign(self, kind: str, payload: dict[str, Any]) -> str:
        body = orjson.dumps(payload)
        return f"{_b64(body)}.{_b64(self._mac(kind, body))}"

    def verify(self, kind: str, token: str, *, max_length: int = 2048) -> dict[str, Any]:
        if not token or len(token) > max_length or token.count(".") != 1:
            raise BadSignature("malformed token")
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            raise BadSignature("malformed token") from None
        if not hmac.compare_digest(mac, self._mac(kind, body)):
            raise BadSignature("bad signature")
        payload = orjson.loads(body)
        if not isinstance(payload, dict):
            raise BadSignature("malformed token")
        return payload


def signing_key(secret: str | None, directory: Path) -> bytes:
    """The configured secret, or this host's random key (made once, 0600)."""
    if secret:
        return hashlib.sha256(secret.encode()).digest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _KEY_FILE
    if not path.exists():
        # Written aside and linked into place: concurrent workers agree on one key.
        tmp = directory / f".{_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"{path} holds no usable key; delete it to make a new one")
    return key
