"""The Python client against a real API process."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from analytics_client import AnalyticsClient, AnalyticsError, RetryPolicy
from testsupport.client_api import LIMITED_APP, RATE_LIMIT


def test_health_needs_no_token_and_reports_starting_without_data(client_api):
    with AnalyticsClient(client_api.url) as anonymous:
        assert anonymous.health()["data_version"] == client_api.data_version()
    assert client_api.empty_api is not None
    with AnalyticsClient(client_api.empty_api.url) as empty:
        health = empty.health()
    assert (health["ready"], health["status"]) == (False, "starting")


def test_query_over_get_revalidates_with_304(client_api):
    statuses: list[tuple[int, str | None]] = []

    def record(response: httpx.Response) -> None:
        statuses.append((response.status_code, response.request.headers.get("if-none-match")))

    http = httpx.Client(timeout=30, event_hooks={"response": [record]})
    with AnalyticsClient(client_api.url, client_api.token(), http=http) as client:
        sql = "SELECT id, warehouse FROM inventory WHERE id <= 4 ORDER BY id"
        first = client.query(sql)
        second = client.query(sql)
    http.close()
    assert [r["id"] for r in first.rows] == [1, 2, 3, 4]  # BIGINT -> int
    assert first.row_count == 4 and not first.truncated and first.next is None
    assert first.etag and first.etag.startswith('W/"')
    assert not first.from_cache and second.from_cache
    assert second.rows == first.rows
    assert statuses == [(200, None), (304, first.etag)]


def test_query_with_params_and_named_queries(client):
    result = client.query("SELECT id FROM inventory WHERE id <= $n ORDER BY id", {"n": 3})
    assert result.rows == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert client.query("SELECT ?::INTEGER * 2 AS v", [21]).rows == [{"v": 42}]

    low = client.named_query("low_stock", {"threshold": 5, "limit": 7})
    assert low.query == "low_stock"
    assert 0 < len(low.rows) <= 7 and all(r["quantity"] <= 5 for r in low.rows)

    names = {q["name"]: q for q in client.list_named_queries()}
    assert names["low_stock"]["parameters"]["limit"]["maximum"] == 1000
    assert set(client.schema()["tables"]) == {"inventory", "orders", "products"}


def test_big_integers_and_decimals_are_exact(client):
    (row,) = client.named_query("big_numbers", {"label": "b"}).rows
    assert row["big"] == 2**53 + 1
    assert row["small"] == 42
    assert row["most_negative"] == -(2**63) + 1
    assert row["huge"] == 2**127 - 1
    assert row["amount"] == Decimal("12345678901234567.89")
    assert row["tenth"] == Decimal("0.10")


def test_decimals_as_strings_on_request(client_api):
    with AnalyticsClient(client_api.url, client_api.token(), decimals="str") as client:
        (row,) = client.named_query("big_numbers").rows
    assert row["amount"] == "12345678901234567.89"


def test_errors_carry_the_api_shape(client_api, client):
    with pytest.raises(AnalyticsError) as syntax:
        client.query("SELEC nope")
    assert (syntax.value.status, syntax.value.code) == (400, "syntax_error")
    assert syntax.value.request_id and len(syntax.value.request_id) == 32
    assert syntax.value.body["error"]["request_id"] == syntax.value.request_id
    assert not syntax.value.retryable

    with pytest.raises(AnalyticsError) as unknown:
        client.named_query("nope")
    assert unknown.value.code == "unknown_query"
    with pytest.raises(AnalyticsError) as invalid:
        client.named_query("low_stock", {"limit": 5000})
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_parameters")

    expired = client_api.token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    with AnalyticsClient(client_api.url, expired) as c, pytest.raises(AnalyticsError) as e:
        c.query("SELECT 1")
    assert (e.value.status, e.value.code) == (401, "invalid_token")

    with (
        AnalyticsClient(client_api.url, client_api.token(scopes="read:analytics")) as c,
        pytest.raises(AnalyticsError) as e,
    ):
        c.schema()
    assert (e.value.status, e.value.code) == (403, "insufficient_scope")

    def broken() -> str:
        raise RuntimeError("login required")

    with AnalyticsClient(client_api.url, broken) as c, pytest.raises(AnalyticsError) as e:
        c.query("SELECT 1")
    assert (e.value.status, e.value.code) == (0, "token_error")

    with AnalyticsClient("http://127.0.0.1:9", "t") as c, pytest.raises(AnalyticsError) as e:
        c.query("SELECT 1")
    assert e.value.code == "network_error"


def test_429_waits_for_retry_after_then_succeeds(client_api):
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    token = client_api.token(azp=LIMITED_APP)
    policy = RetryPolicy(max_attempts=5, max_delay=10)
    with AnalyticsClient(client_api.url, token, retry=policy, sleep=sleep) as client:
        for _ in range(RATE_LIMIT["requests"] + 1):
            assert len(client.named_query("low_stock", {"limit": 1}).rows) == 1
    assert waits and 1 <= waits[0] <= RATE_LIMIT["window_seconds"]


def test_429_without_retries_surfaces_retry_after(client_api):
    token = client_api.token(azp=LIMITED_APP)
    client = AnalyticsClient(client_api.url, token, retry=RetryPolicy.disabled())
    with client, pytest.raises(AnalyticsError) as e:  # the limit is hit inside the loop
        for _ in range(RATE_LIMIT["requests"] + 1):
            client.named_query("low_stock", {"limit": 1})
    assert (e.value.status, e.value.code, e.value.retryable) == (429, "rate_limited", True)
    assert e.value.retry_after is not None and 1 <= e.value.retry_after <= 2


def test_503_honours_retry_after_within_max_delay(client_api):
    waits: list[float] = []
    assert client_api.empty_api is not None
    url = client_api.empty_api.url
    token = client_api.token()
    impatient = AnalyticsClient(url, token, retry=RetryPolicy(max_delay=1))
    with impatient, pytest.raises(AnalyticsError) as quick:
        impatient.query("SELECT 1")
    assert (quick.value.status, quick.value.code, quick.value.attempts) == (503, "no_data", 1)
    assert quick.value.retry_after == 5

    patient = AnalyticsClient(
        url, token, retry=RetryPolicy(max_attempts=3, max_delay=6), sleep=waits.append
    )
    with patient, pytest.raises(AnalyticsError) as gave_up:
        patient.query("SELECT 1")
    assert gave_up.value.attempts == 3
    assert waits == [5.0, 5.0]


def test_arrow_pandas_polars(client):
    arrow = client.query("SELECT id, warehouse FROM inventory ORDER BY id LIMIT 10", format="arrow")
    table = arrow.to_arrow()
    assert table.num_rows == arrow.row_count == 10
    assert str(table.schema.field("id").type) == "int64"
    assert [c["type"] for c in arrow.columns] == ["BIGINT", "VARCHAR"]
    assert arrow.rows[0] == {"id": 1, "warehouse": "wh-1"}

    big = client.named_query("big_numbers", format="arrow")
    assert big.rows[0]["big"] == 2**53 + 1
    assert big.rows[0]["amount"] == Decimal("12345678901234567.89")

    frame = client.named_query("low_stock", {"limit": 5}).to_pandas()
    assert list(frame.columns) == ["id", "product_id", "warehouse", "quantity"]
    assert len(frame) == 5
    polars_frame = arrow.to_polars()
    assert polars_frame.shape == (10, 2)
    assert polars_frame["id"].to_list() == list(range(1, 11))


def test_pages_follow_the_apis_cursor_to_the_end(client):
    sql = "SELECT id FROM inventory ORDER BY id"
    total = client.query(sql, count="exact", page_size=1).total
    pages = list(client.pages(sql, page_size=70))
    ids = [row["id"] for page in pages for row in page.rows]
    assert len(pages) >= 3 and pages[-1].next is None
    assert ids == sorted(set(ids)) and len(ids) == total
    named = list(
        client.named_query_pages("low_stock", {"threshold": 49, "limit": 100}, page_size=40)
    )
    assert [len(p.rows) for p in named] == [40, 40, 20]


def test_named_queries_revalidate_with_304(client):
    first = client.named_query("low_stock", {"threshold": 3, "limit": 5})
    second = client.named_query("low_stock", {"threshold": 3, "limit": 5})
    assert not first.from_cache and second.from_cache and second.rows == first.rows


def test_data_versions_follow_a_publish_and_old_etags_stop_matching(client_api, client):
    sql = "SELECT count(*) AS n FROM inventory"
    before = client.query(sql)
    versions = client.data_versions(interval=0.2, timeout=60)  # over GET /events
    assert next(versions) == before.data_version
    published = client_api.publish()
    assert next(versions) == published
    # Each Gunicorn worker swaps on its own poll: data_version asks again
    # while the answer comes from a worker still on the old version.
    after = client.query(sql, data_version=published)
    assert not after.from_cache
    assert after.data_version == published and after.rows == [{"n": 250}]


def test_data_version_asks_again_until_the_wait_runs_out(client_api):
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with AnalyticsClient(client_api.url, client_api.token(), sleep=sleep) as client:
        served = client.named_query("low_stock").data_version
        assert client.named_query("low_stock", data_version=served).data_version == served
        assert waits == []  # the served version: one request, no wait
        # A version no worker serves: asked again until the wait runs out,
        # then the last answer comes back as it is.
        started = time.monotonic()
        other = client.query(
            "SELECT 1 AS one", data_version="19700101T000000000000Z", data_version_wait=1.2
        )
        assert time.monotonic() - started >= 1.2
        assert other.data_version == served
        assert waits[:2] == [0.25, 0.5] and len(waits) == 3 and 0 < waits[2] <= 0.45
