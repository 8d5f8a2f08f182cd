"""The development issuer's sign-in: OAuth 2.0 authorization code with PKCE.

Only a `DevIssuer(sign_in=True)` serves it (the demo and the console's
browser tests). `GET /authorize` shows one button per development user;
pressing one redirects to `redirect_uri` with a one-time code, and `POST
/oauth/token` trades the code and its PKCE verifier for an RS256 access
token, as Auth0 does, so the console runs the same code against both.

What must always hold: a code is used at most once, only with the verifier
whose S256 hash was presented at /authorize and the same client and
redirect URI; redirects go to loopback addresses only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

__all__ = ["DEV_USERS", "CodeGrant", "SignIn", "SignInError"]

# Who can sign in, and the scopes each gets (intersected with those asked for).
DEV_USERS: dict[str, tuple[str, str]] = {
    "analyst": ("dev-analyst", "read:analytics read:schema read:status"),
    "operator": ("dev-operator", "read:analytics read:schema read:status admin:etl"),
}
CODE_TTL_SECONDS = 120
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class SignInError(ValueError):
    """An OAuth error: `error` is the RFC 6749 code, the message its description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass(frozen=True)
class CodeGrant:
    client_id: str
    redirect_uri: str
    challenge: str
    sub: str
    scope: str
    expires: float


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _granted(user_scopes: str, asked: str) -> str:
    wanted = set(asked.split())
    return " ".join(s for s in user_scopes.split() if not wanted or s in wanted)


class SignIn:
    def __init__(self) -> None:
        self._codes: dict[str, CodeGrant] = {}
        self._lock = threading.Lock()

    @staticmethod
    def check_request(params: dict[str, str]) -> None:
        """Refuses what a real authorization server refuses before showing its page."""
        if params.get("response_type") != "code":
            raise SignInError("unsupported_response_type", "response_type must be code")
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            raise SignInError("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if not params.get("client_id"):
            raise SignInError("invalid_request", "client_id is required")
        redirect = urlsplit(params.get("redirect_uri", ""))
        if redirect.scheme not in ("http", "https") or redirect.hostname not in LOOPBACK:
            raise SignInError("invalid_request", "redirect_uri must be a loopback http(s) URL")

    @staticmethod
    def page(params: dict[str, str]) -> str:
        """The sign-in page: one form per user, carrying the request along."""
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k != "user"
        )
        buttons = "".join(
            f'<form method="post" action="/authorize">{hidden}'
            f'<button type="submit" name="user" value="{name}">Sign in as {name}'
            f" ({html.escape(scopes)})</button></form>"
            for name, (_, scopes) in DEV_USERS.items()
        )
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<link rel="icon" href="data:,"><title>Development sign-in</title></head><body><main>'
            "<h1>Development sign-in</h1><p>The demo's token issuer: choose a user.</p>"
            f"{buttons}</main></body></html>"
        )

    def grant(self, params: dict[str, str]) -> str:
        """The redirect that answers a button press: redirect_uri?code=..&state=.."""
        self.check_request(params)
        user = DEV_USERS.get(params.get("user", ""))
        if user is None:
            raise SignInError("access_denied", "unknown development user")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = CodeGrant(
                client_id=params["client_id"],
                redirect_uri=params["redirect_uri"],
                challenge=params["code_challenge"],
                sub=user[0],
                scope=_granted(user[1], params.get("scope", "")),
                expires=time.monotonic() + CODE_TTL_SECONDS,
            )
        answer = {"code": code, **({"state": params["state"]} if "state" in params else {})}
        separator = "&" if "?" in params["redirect_uri"] else "?"
        return params["redirect_uri"] + separator + urlencode(answer)

    def redeem(self, form: dict[str, str]) -> CodeGrant:
        """The grant behind a code, once, when the verifier and client match."""
        if form.get("grant_type") != "authorization_code":
            raise SignInError("unsupported_grant_type", "grant_type must be authorization_code")
        with self._lock:
            grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant.expires < time.monotonic():
            raise SignInError("invalid_grant", "unknown, used or expired code")
        if (
            form.get("client_id") != grant.client_id
            or form.get("redirect_uri") != grant.redirect_uri
        ):
            raise SignInError("invalid_grant", "client_id or redirect_uri does not match")
        if _s256(form.get("code_verifier", "")) != grant.challenge:
            raise SignInError("invalid_grant", "code_verifier does not match the challenge")
        return grant
