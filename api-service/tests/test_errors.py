"""One error shape everywhere, request ids, body limits, 401/403 semantics,
and nothing internal (paths, traces, tokens) in any response."""

from __future__ import annotations

import pytest

from testsupport.api_app import api_env, make_app_client

WHITELIST = {"policies": {"default": {"tables": ["inventory"]}}}


@pytest.fixture(scope="module")
def client(tmp_path_factory, issuer):
    env = api_env(tmp_path_factory.mktemp("errors"), issuer, WHITELIST, MAX_REQUEST_BYTES="4096")
    with make_app_client(env) as c:
        yield c


@pytest.fixture(scope="module")
def auth(issuer):
    return {"Authorization": f"Bearer {issuer.mint(sub='errors-user')}"}


def _shape(response) -> dict:
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text and "/tmp/" not in response.text
    return body["error"]


def test_missing_and_invalid_tokens_get_401_with_a_challenge(client, issuer):
    r = client.get("/query", params={"q": "SELECT 1"})
    assert r.status_code == 401 and _shape(r)["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="analytics-api"'
    token = issuer.mint(ttl=-3600)
    r = client.get("/query", params={"q": "SELECT 1"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and _shape(r)["code"] == "invalid_token"
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert token not in r.text
    r = client.get("/query", params={"q": "SELECT 1"}, headers={"Authorization": "Basic dTpw"})
    assert r.status_code == 401


def test_missing_scope_is_403(client, issuer):
    token = issuer.mint(scopes="read:schema")
    r = client.get("/query", params={"q": "SELECT 1"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and _shape(r)["code"] == "insufficient_scope"
    assert 'scope="read:analytics"' in r.headers["WWW-Authenticate"]


def test_request_ids_are_honoured_when_well_formed(client, auth):
    r = client.get(
        "/query", params={"q": "SELECT * FROM nowhere"}, headers={**auth, "X-Request-ID": "abc-123"}
    )
    assert r.headers["X-Request-ID"] == "abc-123" and _shape(r)["request_id"] == "abc-123"
    r = client.get(
        "/query", params={"q": "SELECT 1"}, headers={**auth, "X-Request-ID": "bad id\twith junk"}
    )
    assert r.headers["X-Request-ID"] != "bad id\twith junk" and len(r.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("get", "/nope", {}, 404, "not_found"),
        ("delete", "/query", {}, 405, "method_not_allowed"),
        (
            "post",
            "/query",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            422,
            "invalid_request",
        ),
        ("post", "/query", {"json": {"sql": "SELECT 1", "surprise": 1}}, 422, "invalid_request"),
        ("post", "/query", {"json": {"sql": "SELECT 1", "format": "xml"}}, None, None),
        ("get", "/query", {"params": {"q": "SELEC 1"}}, 400, "syntax_error"),
        (
            "get",
            "/query",
            {"params": {"q": "SELECT no_such_column FROM inventory"}},
            400,
            "query_error",
        ),
        (
            "post",
            "/query",
            {"json": {"sql": "SELECT " + "1," * 3000 + "1"}},
            413,
            "request_too_large",
        ),
    ],
)
def test_every_failure_has_the_one_shape(client, auth, method, path, kwargs, status, code):
    headers = {**auth, **kwargs.pop("headers", {})}
    r = getattr(client, method)(path, headers=headers, **kwargs)
    error = _shape(r)
    if status is not None:
        assert r.status_code == status, r.text
        assert error["code"] == code
    else:
        assert 400 <= r.status_code < 500
    assert error["message"]


def test_chunked_bodies_are_limited_too(client, auth):
    def chunks():
        for _ in range(10):
            yield b" " * 1024

    r = client.post(
        "/query", content=chunks(), headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and _shape(r)["code"] == "request_too_large"
