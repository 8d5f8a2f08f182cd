"""Token providers: any `Callable[[], str]` works; these two are built in.

`ClientCredentials` is Auth0's machine-to-machine flow: it POSTs
`grant_type=client_credentials` with the client id, secret and API audience
to `https://{domain}/oauth/token` and reuses the token until shortly before
it expires (Auth0 bills and rate-limits token requests, so never fetch one
per call).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from analytics_client.errors import AnalyticsError

__all__ = ["ClientCredentials", "StaticToken", "TokenProvider"]

TokenProvider = Callable[[], str]


class StaticToken:
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self) -> str:
        return self._token


class ClientCredentials:
    def __init__(
        self,
        domain: str,
        client_id: str,
        client_secret: str,
        audience: str,
        *,
        token_url: str | None = None,
        refresh_margin: float = 60.0,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url or f"https://{domain}/oauth/token"
        self._form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret,
            "audience": audience,
        }
        self._margin = refresh_margin
        self._http = http or httpx.Client(timeout=30)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """Forget the cached token (the next call fetches a new one)."""
        with self._lock:
            self._token = None

    def _fetch(self) -> None:
        try:
            response = self._http.post(self.token_url, json=self._form)
        except httpx.HTTPError as exc:
            raise AnalyticsError(0, "token_error", f"token endpoint unreachable: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or "access_token" not in body:
            # Auth0 answers {"error": ..., "error_description": ...}; never echo the secret.
            reason = body.get("error_description") or body.get("error") or response.text[:200]
            raise AnalyticsError(
                response.status_code, "token_error", f"client-credentials grant refused: {reason}"
            )
        lifetime = float(body.get("expires_in", 3600))
        self._token = str(body["access_token"])
        self._expires_at = self._clock() + max(0.0, lifetime - self._margin)
