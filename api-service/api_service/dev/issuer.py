"""A local development token issuer: RSA keys, a JWKS endpoint over HTTP, and
a minting helper. `make demo` uses it in place of Auth0; the tests use it to
mint good tokens and hostile ones (any claims, any key, any algorithm).
With `sign_in=True` it also signs users in as Auth0 does for the console
(authorization code with PKCE: sign_in.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from api_service.dev.sign_in import SignIn, SignInError

__all__ = ["DevIssuer", "SigningKey"]


class SigningKey:
    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex[:16]
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}


class DevIssuer:
    """Serves `/.well-known/jwks.json` on 127.0.0.1 and mints RS256 tokens."""

    def __init__(
        self, audience: str, host: str = "127.0.0.1", port: int = 0, *, sign_in: bool = False
    ) -> None:
        self.audience = audience
        self.sign_in = SignIn() if sign_in else None
        self.keys: list[SigningKey] = [SigningKey()]
        self.jwks_requests = 0
        self._count_lock = threading.Lock()
        self.fail_jwks = False  # tests flip this to simulate an identity-provider outage
        issuer_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/authorize" and issuer_self.sign_in is not None:
                    self._authorize(dict(parse_qsl(url.query)))
                    return
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                with issuer_self._count_lock:
                    issuer_self.jwks_requests += 1
                if issuer_self.fail_jwks:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": [k.public_jwk for k in issuer_self.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

            # -- sign-in (sign_in=True only) ----------------------------------
            def do_POST(self) -> None:
                sign_in = issuer_self.sign_in
                if sign_in is None or self.path not in ("/authorize", "/oauth/token"):
                    self.send_error(404)
                    return
                length = min(int(self.headers.get("Content-Length") or 0), 65_536)
                form = dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace")))
                if self.path == "/authorize":
                    self._authorize(form, press=True)
                    return
                try:
                    grant = sign_in.redeem(form)
                except SignInError as exc:
                    self._json(400, {"error": exc.error, "error_description": str(exc)})
                    return
                ttl = 3600
                token = issuer_self.mint(sub=grant.sub, scopes=grant.scope, ttl=ttl)
                self._json(
                    200,
                    {
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": ttl,
                        "scope": grant.scope,
                    },
                )

            def do_OPTIONS(self) -> None:
                self.send_response(204 if issuer_self.sign_in is not None else 404)
                self._cors()
                self.send_header("Access-Control-Allow-Methods", "POST")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _authorize(self, params: dict[str, str], press: bool = False) -> None:
                assert issuer_self.sign_in is not None
                try:
                    if press:
                        target = issuer_self.sign_in.grant(params)
                    else:
                        issuer_self.sign_in.check_request(params)
                except SignInError as exc:
                    self.send_error(400, f"{exc.error}: {exc}")
                    return
                if press:
                    self.send_response(303)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = issuer_self.sign_in.page(params).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _cors(self) -> None:
                # The console posts to /oauth/token from the API's origin.
                self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin") or "*")
                self.send_header("Vary", "Origin")

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self.issuer = self.url + "/"
        self.jwks_url = self.url + "/.well-known/jwks.json"
        self._thread: threading.Thread | None = None

    def settings_env(self) -> dict[str, str]:
        """The API settings that make it trust this issuer (AUTH0_* variables)."""
        return {
            "AUTH0_JWKS_URL": self.jwks_url,
            "AUTH0_ISSUER": self.issuer,
            "AUTH0_API_AUDIENCE": self.audience,
        }

    def start(self) -> DevIssuer:
        # A short poll: stop() waits up to one poll interval (0.5 s by default),
        # which every test with its own issuer would pay.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> DevIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rotate(self) -> SigningKey:
        """Publish a new key first in the JWKS (the old one stays until removed)."""
        key = SigningKey()
        self.keys.insert(0, key)
        return key

    def remove_key(self, kid: str) -> None:
        """Stop publishing a key (the end of a rotation)."""
        self.keys = [k for k in self.keys if k.kid != kid]

    def mint(
        self,
        sub: str = "user-1",
        scopes: str = "read:analytics read:schema",
        ttl: int = 3600,
        *,
        key: SigningKey | None = None,
        algorithm: str = "RS256",
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": self.audience,
            "iat": now,
            "exp": now + ttl,
            "scope": scopes,
            "azp": "demo-app",
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signing = key or self.keys[0]
        return jwt.encode(
            payload,
            signing.private_key,
            algorithm=algorithm,
            headers={"kid": signing.kid, **(headers or {})},
        )
