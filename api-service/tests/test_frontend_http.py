"""What browser apps depend on: cacheable named queries (GET, ETag, 304),
CORS preflights for the headers the clients send, exposed headers, refused
preflights in the error shape, and live data-version events over SSE."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from testsupport.api_app import api_env, make_app_client, publish_test_snapshot

ORIGIN = "https://app.example.com"
WHITELIST = {
    "policies": {"default": {"tables": ["inventory"], "named_queries": ["*"]}},
    "named_queries": {
        "low_stock": {
            "sql": "SELECT id, quantity FROM inventory WHERE quantity <= $threshold"
            " AND (NOT $flag OR id > 0) ORDER BY id LIMIT $limit",
            "parameters": {
                "threshold": {"type": "integer", "minimum": 0, "default": 10},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
                "flag": {"type": "boolean", "default": False},
            },
        }
    },
}


@pytest.fixture(scope="module")
def api(tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("frontend")
    env = api_env(
        root,
        issuer,
        WHITELIST,
        CORS_ORIGINS=ORIGIN,
        SNAPSHOT_POLL_SECONDS="0.2",
        EVENTS_MAX_CONNECTIONS="2",
        EVENTS_HEARTBEAT_SECONDS="0.5",
    )
    with make_app_client(env) as client:
        client.token = issuer.mint(sub="frontend", ttl=3600)  # type: ignore[attr-defined]
        client.store = root / "store"  # type: ignore[attr-defined]
        yield client


def _auth(api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


def test_get_named_query_is_cacheable_and_revalidates_with_304(api):
    r = api.get("/queries/low_stock", params={"threshold": "5", "limit": "3"}, headers=_auth(api))
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "private, no-cache"
    post = api.post(
        "/queries/low_stock", json={"params": {"threshold": 5, "limit": 3}}, headers=_auth(api)
    )
    assert post.json()["data"] == r.json()["data"]
    etag = r.headers["ETag"]
    assert post.headers["ETag"] == etag  # GET and POST of the same call: one answer
    again = api.get(
        "/queries/low_stock",
        params={"threshold": "5", "limit": "3"},
        headers={**_auth(api), "If-None-Match": etag},
    )
    assert again.status_code == 304 and again.content == b""
    posted = api.post(
        "/queries/low_stock",
        json={"params": {"threshold": 5, "limit": 3}},
        headers={**_auth(api), "If-None-Match": etag},
    )
    assert posted.status_code == 304
    other = api.get(
        "/queries/low_stock",
        params={"threshold": "6", "limit": "3"},
        headers={**_auth(api), "If-None-Match": etag},
    )
    assert other.status_code == 200  # other parameters, another answer


def test_get_named_query_types_and_checks_its_parameters(api):
    for params, fragment in [
        ({"threshold": "five"}, "must be an integer"),
        ({"threshold": "1e3"}, "must be an integer"),
        ({"flag": "yes"}, "true or false"),
        ({"limit": "500"}, "at most 100"),
        ({"evil": "1"}, "unknown parameter"),
    ]:
        r = api.get("/queries/low_stock", params=params, headers=_auth(api))
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["code"] == "invalid_parameters"
        assert fragment in r.json()["error"]["message"]
    r = api.get("/queries/nope", headers=_auth(api))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_query"


def test_format_works_on_get_and_post_named_queries(api):
    r = api.get("/queries/low_stock", params={"limit": "2", "format": "csv"}, headers=_auth(api))
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.splitlines()[0] == "id,quantity"
    r = api.post(
        "/queries/low_stock", params={"format": "ndjson"}, json={"params": {}}, headers=_auth(api)
    )
    assert r.headers["content-type"].startswith("application/x-ndjson")
    r = api.get("/queries/low_stock", params={"format": "xml"}, headers=_auth(api))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_format"


def test_preflight_allows_the_client_headers_and_answers_expose_what_they_read(api):
    r = api.options(
        "/queries/low_stock",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,content-type,if-none-match,last-event-id",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    r = api.get("/queries/low_stock", headers={**_auth(api), "Origin": ORIGIN})
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    wanted = {"etag", "x-columns", "x-row-count", "x-truncated", "x-cache", "retry-after"}
    wanted |= {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}
    wanted |= {"x-request-id", "x-data-version", "x-next-cursor", "x-total-count"}
    assert wanted <= exposed


def test_a_refused_preflight_answers_in_the_error_shape(api):
    r = api.options(
        "/query",
        headers={
            "Origin": "https://evil.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-secret",
        },
    )
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == "cors_refused"
    assert "origin" in body["error"]["message"] and "headers" in body["error"]["message"]
    assert body["error"]["request_id"] == r.headers["X-Request-ID"]
    assert "Access-Control-Allow-Origin" not in r.headers


class _Reader:
    """Reads an SSE stream in a thread; collects events and comment lines."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: list[dict[str, str]] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self._stop = threading.Event()
        self._client = httpx.Client(timeout=30)
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as r:
                self.status = r.status_code
                event: dict[str, str] = {}
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line == "" and event:
                        self.events.append(event)
                        event = {}
                    elif ":" in line:
                        key, _, value = line.partition(":")
                        event[key] = value.strip()
        except httpx.HTTPError:
            pass

    def wait(self, condition, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, (self.status, self.events, self.comments)
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def _versions(reader: _Reader) -> list[str]:
    return [e["id"] for e in reader.events if e.get("event") == "data_version"]


def test_events_send_the_version_heartbeats_and_each_new_version(api):
    base = str(api.base_url).rstrip("/")
    current = api.get("/health").json()["data_version"]
    ticket = api.post("/events/ticket", headers=_auth(api)).json()["ticket"]
    reader = _Reader(f"{base}/events?ticket={ticket}", {})
    try:
        reader.wait(lambda: _versions(reader) == [current])
        reader.wait(lambda: any("heartbeat" in c for c in reader.comments))
        publish_test_snapshot(api.store, rows=333)
        reader.wait(lambda: len(_versions(reader)) == 2)
        newest = _versions(reader)[1]
        assert newest > current and newest == api.get("/health").json()["data_version"]
        # Resuming with the last id seen sends no repeat of it.
        resumed = _Reader(f"{base}/events", {**_auth(api), "Last-Event-ID": newest})
        try:
            resumed.wait(lambda: resumed.comments != [])
            assert _versions(resumed) == []
        finally:
            resumed.close()
    finally:
        reader.close()


def test_events_need_a_valid_ticket_or_token_and_are_bounded(api):
    base = str(api.base_url).rstrip("/")
    r = api.get("/events")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    ticket = api.post("/events/ticket", headers=_auth(api)).json()["ticket"]
    r = api.get("/events", params={"ticket": ticket[:-2] + "xx"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_ticket"
    _no_streams_left(api)  # an earlier test's streams end at their next write
    readers = [_Reader(f"{base}/events", _auth(api)) for _ in range(2)]
    try:
        for reader in readers:
            reader.wait(lambda reader=reader: reader.events != [])
        r = api.get("/events", headers=_auth(api))
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
        assert "Retry-After" in r.headers
    finally:
        for reader in readers:
            reader.close()
    _no_streams_left(api)  # slots come back when clients leave


def _no_streams_left(api) -> None:
    deadline = time.monotonic() + 10
    while api.app.state.events.connections:
        assert time.monotonic() < deadline, "event stream slots were not given back"
        time.sleep(0.1)


def test_one_caller_cannot_take_every_event_stream(tmp_path, issuer):
    """One user with one ticket opened every stream slot of both workers in a
    second (a ticket is reusable and the rate limit never sees the streams):
    a caller holds at most EVENTS_MAX_CONNECTIONS_PER_USER per worker."""
    env = api_env(
        tmp_path,
        issuer,
        WHITELIST,
        EVENTS_MAX_CONNECTIONS="4",
        EVENTS_MAX_CONNECTIONS_PER_USER="2",
        EVENTS_HEARTBEAT_SECONDS="0.5",
    )
    with make_app_client(env) as api:
        base = str(api.base_url).rstrip("/")
        hog = {"Authorization": f"Bearer {issuer.mint(sub='hog')}"}
        ticket = api.post("/events/ticket", headers=hog).json()["ticket"]
        readers = [_Reader(f"{base}/events?ticket={ticket}", {}) for _ in range(2)]
        try:
            for reader in readers:
                reader.wait(lambda reader=reader: reader.events != [])
            with api.stream("GET", "/events", params={"ticket": ticket}) as r:
                assert r.status_code == 429, "a third stream opened"
                r.read()
            assert r.json()["error"]["code"] == "too_many_connections"
            assert "Retry-After" in r.headers
            other = {"Authorization": f"Bearer {issuer.mint(sub='someone-else')}"}
            reader = _Reader(f"{base}/events", other)
            readers.append(reader)
            reader.wait(lambda: reader.events != [])
            assert reader.status == 200
        finally:
            for reader in readers:
                reader.close()
        _no_streams_left(api)
