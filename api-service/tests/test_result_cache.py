"""The result cache: hits for the same query, never across a data version,
bounded by bytes; ETag and If-None-Match; auth and the guard still run."""

from __future__ import annotations

import time

import pytest

from api_service.query.result_cache import CachedResponse, ResultCache, normalise_sql, query_key
from testsupport.api_app import make_app_client, serving_env
from testsupport.publishing import publish_file
from testsupport.serving import build_database

SQL = "SELECT warehouse, sum(quantity) AS total FROM inventory GROUP BY 1 ORDER BY 1"


@pytest.fixture
def platform(tmp_path, issuer):
    db = build_database(tmp_path / "v1.db", marker=0)
    publish_file(db, tmp_path / "store", tmp_path / "work")
    auth = issuer.settings_env()
    return tmp_path, auth


def wait_for_version(client, version: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").json().get("data_version") != version:
        assert time.monotonic() < deadline, "the API did not pick up the new version"
        time.sleep(0.05)


def test_a_new_data_version_never_serves_an_old_result(platform, issuer):
    root, auth = platform
    with make_app_client(serving_env(root / "store", root / "data", auth)) as client:
        headers = {"Authorization": f"Bearer {issuer.mint(sub='cache-user')}"}
        first = client.get("/query", params={"q": SQL}, headers=headers)
        again = client.get(
            "/query",
            params={
                "q": "SELECT warehouse,  sum(quantity) AS total\nFROM inventory GROUP BY 1 ORDER BY 1"
            },
            headers=headers,
        )
        assert first.status_code == again.status_code == 200
        assert first.headers["x-cache"] == "miss" and again.headers["x-cache"] == "hit"
        assert again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]

        # A publish in between: different data under the same query.
        manifest = publish_file(
            build_database(root / "v2.db", marker=5), root / "store", root / "work"
        )
        wait_for_version(client, manifest.version)
        after = client.get("/query", params={"q": SQL}, headers=headers)
        assert after.status_code == 200
        assert after.headers["x-cache"] == "miss"
        assert after.json()["data_version"] == manifest.version != first.json()["data_version"]
        assert after.json()["data"] != first.json()["data"]
        assert after.headers["etag"] != first.headers["etag"]
        # Old entries are gone, not merely unreachable.
        cache: ResultCache = client.app.state.query_service.cache
        assert len(cache) == 1


def test_etag_answers_304_and_changes_with_the_version(platform, issuer):
    root, auth = platform
    with make_app_client(serving_env(root / "store", root / "data", auth)) as client:
        headers = {"Authorization": f"Bearer {issuer.mint(sub='etag-user')}"}
        r = client.get("/query", params={"q": SQL}, headers=headers)
        etag = r.headers["etag"]
        assert etag.startswith('W/"')
        r304 = client.get("/query", params={"q": SQL}, headers={**headers, "If-None-Match": etag})
        assert r304.status_code == 304 and r304.content == b""
        assert r304.headers["etag"] == etag
        # Another format is another representation.
        csv = client.get(
            "/query", params={"q": SQL, "format": "csv"}, headers={**headers, "If-None-Match": etag}
        )
        assert csv.status_code == 200
        # No token: refused before any cache or ETag logic.
        anon = client.get("/query", params={"q": SQL}, headers={"If-None-Match": etag})
        assert anon.status_code == 401
        # The guard still runs on requests that would be cache hits.
        for sql in ("SELECT * FROM secrets", "DROP TABLE inventory"):
            bad = client.get("/query", params={"q": sql}, headers={**headers, "If-None-Match": "*"})
            assert bad.status_code in (400, 403), bad.text

        manifest = publish_file(
            build_database(root / "v2.db", marker=3), root / "store", root / "work"
        )
        wait_for_version(client, manifest.version)
        fresh = client.get("/query", params={"q": SQL}, headers={**headers, "If-None-Match": etag})
        assert fresh.status_code == 200 and fresh.headers["etag"] != etag


def test_cache_hits_still_count_against_the_rate_limit(platform, issuer):
    root, auth = platform
    with make_app_client(
        serving_env(root / "store", root / "data", auth, RATE_LIMIT_REQUESTS="3")
    ) as client:
        headers = {"Authorization": f"Bearer {issuer.mint(sub='limited-user')}"}
        codes = [
            client.get("/query", params={"q": SQL}, headers=headers).status_code for _ in range(5)
        ]
        assert codes[:3] == [200, 200, 200]
        assert codes[3:] == [429, 429]


def test_the_cache_stays_within_its_byte_bound(platform, issuer):
    root, auth = platform
    bound = 60_000
    with make_app_client(
        serving_env(root / "store", root / "data", auth, RESULT_CACHE_BYTES=str(bound))
    ) as client:
        headers = {
            "Authorization": f"Bearer {issuer.mint(sub='bound-user')}",
            "Accept-Encoding": "identity",  # ~6 KB per entry
        }
        cache: ResultCache = client.app.state.query_service.cache
        for n in range(40):
            r = client.get(
                "/query",
                params={"q": f"SELECT * FROM inventory WHERE id > {n} ORDER BY id LIMIT 100"},
                headers=headers,
            )
            assert r.status_code == 200
            assert cache.bytes <= bound
        assert 0 < len(cache) < 40  # evictions happened


def test_lru_eviction_and_accounting():
    cache = ResultCache(max_bytes=4000)
    entry = CachedResponse(b"x" * 700, "application/json")
    for i in range(10):
        cache.put("v1", f"k{i}", entry)
        assert cache.bytes <= 4000
        assert cache.bytes == sum(e.size for e in cache._entries.values())
    assert cache.get("v1", "k0") is None  # oldest evicted
    assert cache.get("v1", "k9") is not None
    # Entries bigger than a quarter of the bound are not kept at all.
    assert not cache.put("v1", "big", CachedResponse(b"x" * 1500, "application/json"))
    # A new version drops the old one's entries.
    cache.put("v2", "k0", entry)
    assert len(cache) == 1 and cache.get("v1", "k9") is None
    assert ResultCache(0).put("v1", "k", entry) is False


def test_keys_ignore_whitespace_but_not_literals_or_comments():
    assert normalise_sql("SELECT  a,\tb FROM t ") == normalise_sql("SELECT a, b FROM t")
    assert normalise_sql("SELECT 'a  b'") != normalise_sql("SELECT 'a b'")
    assert normalise_sql('SELECT x AS "A"') != normalise_sql('SELECT x AS "a"')
    # a newline ends a -- comment: these two are different queries
    assert normalise_sql("SELECT 1 -- c\n, 2") != normalise_sql("SELECT 1 -- c , 2")
    base = query_key("v1", "SELECT 1", None, "json")
    assert base != query_key("v2", "SELECT 1", None, "json")
    assert base != query_key("v1", "SELECT 1", None, "csv")
    assert query_key("v1", "SELECT $a", {"a": 1}, "json") != query_key(
        "v1", "SELECT $a", {"a": 2}, "json"
    )
    assert query_key("v1", "SELECT $a, $b", {"a": 1, "b": 2}, "json") == query_key(
        "v1", "SELECT $a, $b", {"b": 2, "a": 1}, "json"
    )
