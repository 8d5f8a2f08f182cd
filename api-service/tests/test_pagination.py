"""Pages of a result: signed `next` cursors bound to the query and the data
version, `count=exact`, stale and forged cursors refused with their codes."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from testsupport.api_app import api_env, make_app_client, publish_test_snapshot

WHITELIST = {
    "policies": {
        "default": {"tables": ["inventory", "orders"], "named_queries": ["*"]},
        "narrow": {"tables": ["orders"], "named_queries": []},
    },
    "apps": {"narrow-app": "narrow"},
    "named_queries": {
        "stock": {
            "sql": "SELECT id, quantity FROM inventory WHERE quantity <= $threshold ORDER BY id",
            "parameters": {"threshold": {"type": "integer", "minimum": 0, "default": 49}},
        }
    },
}
SQL = "SELECT id, warehouse FROM inventory ORDER BY id"


@pytest.fixture(scope="module")
def api(tmp_path_factory, issuer):
    root = tmp_path_factory.mktemp("pages")
    env = api_env(root, issuer, WHITELIST, MAX_RESULT_ROWS="50", SNAPSHOT_POLL_SECONDS="0.2")
    with make_app_client(env) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='pager', ttl=3600)}"
        client.store = root / "store"  # type: ignore[attr-defined]
        yield client


def test_pages_cover_the_result_exactly_once_with_a_total(api):
    first = api.post("/query", json={"sql": SQL, "count": "exact", "page_size": 30}).json()
    assert first["total"] == 200 and first["row_count"] == 30 and first["truncated"] is True
    pages = [first]
    while "next" in pages[-1]:
        r = api.post("/query", json={"sql": SQL, "cursor": pages[-1]["next"], "page_size": 30})
        assert r.status_code == 200, r.text
        pages.append(r.json())
    ids = [row["id"] for page in pages for row in page["data"]]
    assert ids == list(range(1, 201))
    assert pages[-1]["truncated"] is False and len(pages) == 7


def test_get_form_and_named_queries_page_too(api):
    r = api.get("/query", params={"q": SQL})
    assert r.status_code == 200 and r.json()["row_count"] == 50
    second = api.get("/query", params={"q": SQL, "cursor": r.json()["next"]}).json()
    assert second["data"][0]["id"] == 51
    named = api.get("/queries/stock").json()
    follow = api.post("/queries/stock", json={"cursor": named["next"]}).json()
    assert follow["data"][0]["id"] > named["data"][-1]["id"]


def test_a_cursor_cannot_change_the_query_nor_be_forged(api):
    first = api.post("/query", json={"sql": SQL}).json()
    other = api.post("/query", json={"sql": "SELECT id FROM inventory", "cursor": first["next"]})
    assert other.status_code == 400 and other.json()["error"]["code"] == "invalid_cursor"
    as_csv = api.post("/query", json={"sql": SQL, "cursor": first["next"], "format": "csv"})
    assert as_csv.json()["error"]["code"] == "invalid_cursor"
    # A caller rewrites the offset in the readable payload: the signature no longer matches.
    payload, mac = first["next"].split(".")
    fields = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields["o"] = 0
    forged = base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=").decode() + "." + mac
    r = api.post("/query", json={"sql": SQL, "cursor": forged})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"


def test_the_guard_still_decides_on_every_page(api, issuer):
    first = api.post("/query", json={"sql": SQL}).json()
    narrow = issuer.mint(sub="narrow", azp="narrow-app", ttl=600)
    r = api.post(
        "/query",
        json={"sql": SQL, "cursor": first["next"]},
        headers={"Authorization": f"Bearer {narrow}"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "table_not_allowed"


def test_a_cursor_from_an_older_version_is_stale(api):
    first = api.post("/query", json={"sql": SQL}).json()
    version = first["data_version"]
    publish_test_snapshot(api.store, rows=250)  # different data: a new version
    deadline = time.monotonic() + 30
    while api.get("/health").json()["data_version"] == version:
        assert time.monotonic() < deadline, "the API did not swap to the new version"
        time.sleep(0.1)
    r = api.post("/query", json={"sql": SQL, "cursor": first["next"]})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "stale_cursor"
    assert "first page" in r.json()["error"]["message"]


def test_an_integer_past_64_bits_in_params_is_answered_not_a_500(api):
    # orjson cannot key the cache on it; found by the schema fuzzer.
    r = api.post("/query", json={"sql": "SELECT $a::VARCHAR AS a", "params": {"a": 2**70}})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [{"a": str(2**70)}]


def test_a_cursor_newer_than_this_worker_is_retried_unless_it_was_rolled_back():
    from api_service.auth.signing import Signer
    from api_service.errors import DataUnavailable, StaleCursor
    from api_service.query.pagination import Cursor, Paginator, Paging

    paginator = Paginator(Signer(b"k" * 32))
    newer = Paging(cursor=Cursor("20250102T000000000000Z", 50, "b"))
    # A sibling worker swapped first; this one has not loaded the manifest's version yet.
    with pytest.raises(DataUnavailable) as lagging:
        paginator.check(newer, "20250101T000000000000Z", "b", "20250102T000000000000Z")
    assert lagging.value.headers["Retry-After"] == "1"
    # The manifest names this worker's version (a rollback): the cursor is stale.
    with pytest.raises(StaleCursor):
        paginator.check(newer, "20250101T000000000000Z", "b", "20250101T000000000000Z")
