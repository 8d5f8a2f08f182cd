"""Results have byte and row caps: one query cannot take a worker's memory, and a
cut stream is never mistaken for a complete one."""

from __future__ import annotations

import httpx
import pytest

from testsupport.api_app import make_app_client, serving_env
from testsupport.publishing import publish_file
from testsupport.serving import build_database

ROWS = 20_000
# One row holding the whole table (~0.5 MB of Arrow): the shape of query that
# once produced a 313 MB JSON body and a 2.2 GB worker on the benchmark snapshot.
ONE_HUGE_ROW = "SELECT list(t) AS everything FROM inventory t"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps")
    publish_file(
        build_database(root / "source.db", inventory_rows=ROWS), root / "store", root / "work"
    )
    return root


def client_for(store, issuer, name, **settings):
    # One pool thread, so every query below reuses the cursor a refused one used.
    env = {"QUERY_WORKERS": "1", "MAX_RESULT_BYTES": "200000", **settings}
    return make_app_client(
        serving_env(store / "store", store / f"data-{name}", issuer.settings_env(), **env)
    )


@pytest.mark.parametrize("fmt", ["json", "arrow", "parquet"])
def test_a_result_past_the_byte_cap_is_refused_before_it_is_encoded(store, issuer, fmt):
    with client_for(store, issuer, f"bytes-{fmt}", MAX_RESULT_ROWS=str(ROWS)) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='caps')}"
        for sql in (ONE_HUGE_ROW, "SELECT * FROM inventory"):  # one value / many rows
            r = client.get("/query", params={"q": sql, "format": fmt})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "result_too_large"
            assert "MAX_RESULT_BYTES" in error["message"]
        # Under the cap the same worker and cursor answer in full.
        r = client.get("/query", params={"q": "SELECT * FROM inventory WHERE id <= 100"})
        assert r.status_code == 200, r.text
        assert r.json()["row_count"] == 100
        r = client.get("/query", params={"q": "SELECT count(*) AS n FROM inventory"})
        assert r.json()["data"] == [{"n": ROWS}]


def streamed_lines(client: httpx.Client, sql: str) -> tuple[int, bool]:
    """(lines received, whether the body ended properly)."""
    lines = 0
    try:
        with client.stream("GET", "/query", params={"q": sql, "format": "ndjson"}) as r:
            assert r.status_code == 200
            for _ in r.iter_lines():
                lines += 1
    except httpx.RemoteProtocolError:  # the server cut the chunked body
        return lines, False
    return lines, True


NO_BYTE_CAP = {"MAX_RESULT_BYTES": "32000000"}
# The first 10,000-row batch is small; the second carries ~1 MB of text.
LATE_HUGE_BATCH = (
    "SELECT id, CASE WHEN id > 10000 THEN repeat('x', 100) ELSE '' END AS pad"
    " FROM inventory ORDER BY id"
)


@pytest.mark.parametrize(
    ("settings", "sql"),
    [
        # Each cap alone: the others far away.
        ({"STREAM_MAX_ROWS": "5000", **NO_BYTE_CAP}, "SELECT * FROM inventory"),
        ({"STREAM_MAX_BYTES": "100000", **NO_BYTE_CAP}, "SELECT * FROM inventory"),
    ],
    ids=["rows", "bytes"],
)
def test_streams_are_cut_at_their_caps(store, issuer, settings, sql):
    with client_for(store, issuer, "stream-" + "-".join(settings) or "batch", **settings) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='caps')}"
        lines, complete = streamed_lines(client, sql)
        assert not complete and lines < ROWS
        # Within the caps the stream is complete, on the same worker.
        lines, complete = streamed_lines(client, "SELECT * FROM inventory WHERE id <= 1000")
        assert complete and lines == 1000


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("sql", [ONE_HUGE_ROW, LATE_HUGE_BATCH], ids=["first", "later"])
def test_a_stream_with_a_batch_too_large_is_refused_before_it_starts(store, issuer, fmt, sql):
    # The query runs to its end (spooled) before the answer starts, so even a
    # later batch past MAX_RESULT_BYTES (200 kB) is a clean 400, not a cut.
    with client_for(store, issuer, f"first-{fmt}") as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='caps')}"
        r = client.get("/query", params={"q": sql, "format": fmt})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "result_too_large"
        lines, complete = streamed_lines(client, "SELECT * FROM inventory WHERE id <= 10")
        assert complete and lines == 10


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_stream_whose_query_fails_in_a_late_row_is_a_clean_error_not_a_cut(store, issuer, fmt):
    """DuckDB failing after the first batch (a bad value here; out of memory
    under load: 503 busy) is answered in the error shape: the stream's query
    runs to its end before the first byte."""
    sql = "SELECT id, CASE WHEN id > 15000 THEN error('bad row ' || id) END AS x FROM inventory"
    with client_for(store, issuer, f"late-{fmt}", **NO_BYTE_CAP) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='caps')}"
        r = client.get("/query", params={"q": sql, "format": fmt})
        assert r.status_code == 400, r.text[:300]
        assert r.json()["error"]["code"] == "query_error"
        assert "bad row 15001" in r.json()["error"]["message"]
        lines, complete = streamed_lines(client, "SELECT * FROM inventory WHERE id <= 10")
        assert complete and lines == 10


def test_a_query_that_runs_duckdb_out_of_memory_is_busy_not_broken(store, issuer):
    """DuckDB's memory_limit is shared by the worker's queries: running out is
    a 503 busy to retry, and the worker answers the next query."""
    with client_for(store, issuer, "duckdb-oom", MEMORY_LIMIT="512MiB") as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='caps')}"
        # 400,000 x ~3 KB of distinct text in one aggregate state: it cannot spill.
        r = client.get(
            "/query",
            params={
                "q": "SELECT length(string_agg(repeat('x', 3000) || CAST(a.id * 100 + b.id AS VARCHAR),"
                " ',')) AS n FROM inventory a, inventory b WHERE b.id <= 20"
            },
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "busy" and r.headers["Retry-After"]
        r = client.get("/query", params={"q": "SELECT count(*) AS n FROM inventory"})
        assert r.status_code == 200 and r.json()["data"] == [{"n": ROWS}]
