"""A query whose guard decision is not cached runs the guard and the query in
one pool task; the guard still comes first, and nothing (no cache hit, no 304,
no execution) answers a query it refuses."""

from __future__ import annotations

import pytest

from api_service.query.sql_guard import clear_guard_cache
from testsupport.api_app import make_app_client, serving_env
from testsupport.publishing import publish_file
from testsupport.serving import build_database

REFUSED = "SELECT getenv('HOME') AS home"


@pytest.fixture(scope="module")
def served(tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("guard-path")
    db = build_database(root / "source.db")
    publish_file(db, root / "store", root / "work")
    auth = issuer.settings_env()
    with make_app_client(serving_env(root / "store", root / "data", auth)) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='guard-path')}"
        yield client


@pytest.mark.parametrize("headers", [{}, {"If-None-Match": "*"}])
def test_a_refused_new_query_is_refused_before_anything_else(served, headers):
    clear_guard_cache()
    for _ in range(2):  # a new text (guard on the pool), then its cached refusal (inline)
        r = served.get("/query", params={"q": REFUSED}, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "function_not_allowed"
        assert "etag" not in r.headers


def test_a_new_query_runs_in_one_hop_and_matches_the_cached_path(served):
    sql = "SELECT id, warehouse FROM inventory WHERE id BETWEEN 10 AND 12 ORDER BY id"
    clear_guard_cache()
    first = served.get("/query", params={"q": sql})
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    # The same text again: the guard's decision is cached now, and so is the result.
    second = served.get("/query", params={"q": sql})
    assert second.headers["x-cache"] == "hit"
    assert first.json()["data"] == second.json()["data"]
    assert [row["id"] for row in first.json()["data"]] == [10, 11, 12]
    # Guard decision forgotten, result still cached: the guard runs, then the hit.
    clear_guard_cache()
    third = served.get("/query", params={"q": sql})
    assert third.headers["x-cache"] == "hit" and third.content == second.content
    # ... and the same for a conditional request (304 only after the guard).
    clear_guard_cache()
    etag = first.headers["etag"]
    r = served.get("/query", params={"q": sql}, headers={"If-None-Match": etag})
    assert r.status_code == 304
    # A POST with parameters takes the same one-hop path.
    clear_guard_cache()
    r = served.post("/query", json={"sql": "SELECT $x::INTEGER + 1 AS y", "params": {"x": 41}})
    assert r.status_code == 200 and r.json()["data"] == [{"y": 42}]


def test_an_over_long_new_query_is_refused_without_work(served):
    clear_guard_cache()
    r = served.post("/query", json={"sql": "SELECT 1 -- " + "x" * 30_000})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "query_too_long"


def test_streamed_formats_guard_a_new_query_first(served):
    clear_guard_cache()
    r = served.get("/query", params={"q": REFUSED, "format": "ndjson"})
    assert r.status_code == 400
    clear_guard_cache()
    r = served.get("/query", params={"q": "SELECT 1 AS one", "format": "ndjson"})
    assert r.status_code == 200 and r.text == '{"one":1}\n'
