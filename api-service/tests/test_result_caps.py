"""Results have byte and row caps: one query cannot take a worker's memory, and a
cut stream is never mistaken for a complete one."""

from __future__ import annotations

import httpx
import pytest

from testsupport.serving import build_database, publish, serving_client

ROWS = 20_000
# One row holding the whole table (~0.5 MB of Arrow): the shape of query that
# once produced a 313 MB JSON body and a 2.2 GB worker on the benchmark snapshot.
ONE_HUGE_ROW = "SELECT list(t) AS everything FROM inventory t"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps")
    publish(build_database(root / "source.db", inventory_rows=ROWS), root / "store", root / "work")
    return root


def client_for(store, issuer, name, **settings):
    # One pool thread, so every query below reuses the cursor a refused one used.
    env = {"QUERY_WORKERS": "1", "MAX_RESULT_BYTES": "200000", **settings}
    return serving_client(store / "store", store / f"data-{name}", issuer.settings_env(), **env)


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


@pytest.mark.parametrize(
    ("settings", "sql"),
    [
        ({"STREAM_MAX_ROWS": "5000"}, "SELECT * FROM inventory"),
        ({"STREAM_MAX_BYTES": "100000"}, "SELECT * FROM inventory"),
        ({}, ONE_HUGE_ROW),  # a single batch past MAX_RESULT_BYTES
    ],
    ids=["rows", "bytes", "one-huge-batch"],
)
def test_streams_are_cut_at_their_caps(store, issuer, settings, sql):
    with client_for(store, issuer, "stream-" + "-".join(settings) or "batch", **settings) as client:
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='caps')}"
        lines, complete = streamed_lines(client, sql)
        assert not complete and lines < ROWS
        # Within the caps the stream is complete, on the same worker.
        lines, complete = streamed_lines(client, "SELECT * FROM inventory WHERE id <= 1000")
        assert complete and lines == 1000
