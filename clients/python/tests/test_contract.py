"""What the client does with answers today's API cannot give yet (`next`
cursors), and the client-credentials provider, against local stand-ins."""

from __future__ import annotations

import json

import httpx
import pytest

from analytics_client import AnalyticsClient, AnalyticsError, ClientCredentials


def _page(ids: list[int], next_cursor: str | None) -> dict:
    body = {
        "success": True,
        "data": [{"id": str(i)} for i in ids],
        "columns": [{"name": "id", "type": "BIGINT"}],
        "row_count": len(ids),
        "truncated": False,
        "data_version": "v1",
        "execution_time_ms": 1.0,
    }
    if next_cursor:
        body["next"] = next_cursor
    return body


def test_pages_follow_next_with_a_cursor_field():
    bodies: list[dict] = []
    answers = {None: _page([1, 2], "c1"), "c1": _page([3, 4], "c2"), "c2": _page([5], None)}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        return httpx.Response(200, json=answers[body.get("cursor")])

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with AnalyticsClient("http://api.test", "t", http=http) as client:
        pages = list(client.named_query_pages("low_stock", {"limit": 2}))
    assert [r["id"] for p in pages for r in p.rows] == [1, 2, 3, 4, 5]
    assert [b.get("cursor") for b in bodies] == [None, "c1", "c2"]
    assert all(b["params"] == {"limit": 2} for b in bodies)


def test_pages_refuse_a_repeated_cursor():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=_page([1], "same"))

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = AnalyticsClient("http://api.test", "t", http=http)
    with client, pytest.raises(AnalyticsError, match="cursor twice"):
        list(client.pages("SELECT 1", {"a": 1}))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_credentials_fetches_once_until_expiry_and_the_api_accepts_it(client_api):
    requests: list[dict] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        form = json.loads(request.content)
        requests.append(form)
        assert request.url.path == "/oauth/token"
        if form["client_secret"] != "s3cret":
            return httpx.Response(
                401, json={"error": "access_denied", "error_description": "Unauthorized"}
            )
        token = client_api.issuer.mint(
            sub=f"{form['client_id']}@clients", azp=None, gty="client-credentials"
        )
        return httpx.Response(
            200, json={"access_token": token, "expires_in": 600, "token_type": "Bearer"}
        )

    clock = _Clock()
    provider = ClientCredentials(
        "tenant.example.auth0.com",
        "m2m-client",
        "s3cret",
        client_api.issuer.audience,
        http=httpx.Client(transport=httpx.MockTransport(token_endpoint)),
        clock=clock,
    )
    assert provider.token_url == "https://tenant.example.auth0.com/oauth/token"
    with AnalyticsClient(client_api.url, provider) as client:
        assert client.query("SELECT 1::INTEGER AS one").rows == [{"one": 1}]
        client.query("SELECT 2::INTEGER AS two")
        assert len(requests) == 1
        assert requests[0] == {
            "grant_type": "client_credentials",
            "client_id": "m2m-client",
            "client_secret": "s3cret",
            "audience": client_api.issuer.audience,
        }
        clock.now += 600 - 60  # the refresh margin before expires_in
        client.query("SELECT 3::INTEGER AS three")
        assert len(requests) == 2

    wrong = ClientCredentials(
        "tenant.example.auth0.com",
        "m2m-client",
        "wrong-secret",
        "aud",
        http=httpx.Client(transport=httpx.MockTransport(token_endpoint)),
    )
    with pytest.raises(AnalyticsError) as e:
        wrong()
    assert (e.value.status, e.value.code) == (401, "token_error")
    assert "Unauthorized" in e.value.message and "wrong-secret" not in str(e.value)
