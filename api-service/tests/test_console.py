"""The console as the API serves it (`/console`), and the development
issuer's sign-in (authorization code with PKCE) that the demo uses.

The browser itself is in tests/browser/test_console.py; these check what
must hold for any browser: a strict Content-Security-Policy on every console
response, a config that names only the configured authorization server, a
page that says so when the assets were not built, and a code that is usable
once, only with its verifier, client and redirect URI.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from api_service.console import mount
from api_service.dev.issuer import DevIssuer
from testsupport.api_app import api_env, make_app_client

WHITELIST = {"policies": {"default": {"tables": ["inventory"]}}}
REDIRECT = "http://127.0.0.1:8000/console/"


def _csp(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: d.partition(" ")[2] for d in policy.split("; ")}


def test_console_responses_carry_a_strict_policy_and_the_config(tmp_path, issuer):
    env = api_env(
        tmp_path,
        issuer,
        WHITELIST,
        CONSOLE_AUTH0_CLIENT_ID="spa-client",
        CONSOLE_LOGIN_URL="https://login.example.test/",
    )
    with make_app_client(env) as client:
        redirect = client.get("/console", follow_redirects=False)
        assert redirect.status_code == 308 and redirect.headers["location"] == "/console/"
        config = client.get("/console/config.json")
        page = client.get("/console/")
        for response in (redirect, config, page):
            csp = _csp(response)
            assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'"
            assert csp["connect-src"] == "'self' https://login.example.test"
            assert csp["frame-ancestors"] == "'none'"
            assert "unsafe" not in response.headers["content-security-policy"]
        body = config.json()
        assert body["auth"] == {
            "authorize_url": "https://login.example.test/authorize",
            "token_url": "https://login.example.test/oauth/token",
            "client_id": "spa-client",
            "audience": env["AUTH0_API_AUDIENCE"],
            "scope": "openid read:analytics read:schema read:status admin:etl",
        }
        assert body["admin_commands"] is False
        # The optional endpoints, as this server publishes them.
        paths = client.get("/openapi.json").json()["paths"]
        assert body["endpoints"] == {"status": "/status" in paths, "events": "/events" in paths}
        # The API's own routes keep their usual headers.
        assert "content-security-policy" not in client.get("/health").headers


def test_without_a_client_id_the_console_offers_no_sign_in(tmp_path, issuer):
    with make_app_client(api_env(tmp_path, issuer, WHITELIST)) as client:
        config = client.get("/console/config.json")
        assert config.json()["auth"] is None
        assert _csp(config)["connect-src"] == "'self'"


def test_console_enabled_false_serves_nothing(tmp_path, issuer):
    with make_app_client(api_env(tmp_path, issuer, WHITELIST, CONSOLE_ENABLED="false")) as client:
        assert client.get("/console/").status_code == 404
        assert client.get("/console/config.json").status_code == 404


def test_unbuilt_assets_give_a_page_that_says_so(tmp_path, issuer, monkeypatch):
    monkeypatch.setattr(mount, "STATIC_DIR", tmp_path / "not-built")
    with make_app_client(api_env(tmp_path, issuer, WHITELIST)) as client:
        page = client.get("/console/")
        assert page.status_code == 200 and "make console" in page.text
        assert "<script" not in page.text and _csp(page)["script-src"] == "'self'"


# -- the development issuer's sign-in -------------------------------------------
def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def sign_in_issuer() -> DevIssuer:
    with DevIssuer(audience="https://api.test", sign_in=True) as dev:
        yield dev


def _authorize(issuer: DevIssuer, verifier: str, user: str = "analyst", **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": "console",
        "redirect_uri": REDIRECT,
        "scope": "read:analytics read:schema admin:etl",
        "state": "s1",
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    page = httpx.get(issuer.url + "/authorize", params=params)
    assert page.status_code == 200 and 'value="operator"' in page.text
    pressed = httpx.post(issuer.url + "/authorize", data={**params, "user": user})
    assert pressed.status_code == 303
    target = urlsplit(pressed.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT
    query = parse_qs(target.query)
    assert query["state"] == ["s1"]
    return query["code"][0]


def _token(issuer: DevIssuer, code: str, verifier: str, **extra: str) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "client_id": "console",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        **extra,
    }
    return httpx.post(
        issuer.url + "/oauth/token", data=form, headers={"Origin": "http://127.0.0.1:8000"}
    )


@pytest.mark.parametrize(
    ("user", "scopes"),
    [
        ("analyst", "read:analytics read:schema"),
        ("operator", "read:analytics read:schema admin:etl"),
    ],
)
def test_a_code_and_its_verifier_give_a_token_once(sign_in_issuer, user, scopes):
    verifier = "v" * 50
    code = _authorize(sign_in_issuer, verifier, user)
    answer = _token(sign_in_issuer, code, verifier)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == "http://127.0.0.1:8000"
    token = answer.json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    # Granted: what the user has, among what was asked for.
    assert claims["scope"] == scopes and claims["aud"] == "https://api.test"
    again = _token(sign_in_issuer, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "wrong",
    [
        {"code_verifier": "w" * 50},
        {"client_id": "someone-else"},
        {"redirect_uri": "http://127.0.0.1:9999/console/"},
        {"grant_type": "password"},
    ],
)
def test_a_code_is_refused_with_the_wrong_verifier_client_or_redirect(sign_in_issuer, wrong):
    code = _authorize(sign_in_issuer, "v" * 50)
    answer = _token(sign_in_issuer, code, "v" * 50, **wrong)
    assert answer.status_code == 400
    assert answer.json()["error"] in ("invalid_grant", "unsupported_grant_type")


@pytest.mark.parametrize(
    "bad",
    [
        {"redirect_uri": "https://evil.example/console/"},
        {"code_challenge_method": "plain"},
        {"response_type": "token"},
    ],
)
def test_the_sign_in_page_refuses_unsafe_requests(sign_in_issuer, bad):
    params = {
        "response_type": "code",
        "client_id": "console",
        "redirect_uri": REDIRECT,
        "code_challenge": _challenge("v" * 50),
        "code_challenge_method": "S256",
        **bad,
    }
    assert httpx.get(sign_in_issuer.url + "/authorize", params=params).status_code == 400


def test_an_issuer_without_sign_in_has_no_sign_in_endpoints(issuer):
    assert httpx.get(issuer.url + "/authorize").status_code == 404
    assert httpx.post(issuer.url + "/oauth/token", data={}).status_code == 404
