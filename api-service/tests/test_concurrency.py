"""Queries run on the worker pool, never on the event loop: a slow query does
not stall fast ones on the same worker, and the timeout stops it."""

from __future__ import annotations

import threading
import time

from testsupport.api_app import make_app_client, serving_env
from testsupport.publishing import publish_file
from testsupport.serving import build_database

# ~2.7e10 row combinations: far longer than the timeout on any machine.
SLOW = (
    "SELECT count(*) FROM inventory a, inventory b, inventory c"
    " WHERE hash(a.id::BIGINT + b.id * 3001 + c.id::BIGINT * 9000001) = 0"
)


def test_slow_query_does_not_stall_fast_ones(tmp_path, issuer):
    db = build_database(tmp_path / "source.db", inventory_rows=3000)
    publish_file(db, tmp_path / "store", tmp_path / "work")
    auth = issuer.settings_env()
    settings = {"QUERY_TIMEOUT_SECONDS": "4", "QUERY_WORKERS": "4", "DUCKDB_THREADS": "1"}
    with make_app_client(
        serving_env(tmp_path / "store", tmp_path / "data", auth, **settings)
    ) as client:
        headers = {"Authorization": f"Bearer {issuer.mint(sub='concurrency')}"}
        slow: dict[str, object] = {}

        def run_slow() -> None:
            r = client.get("/query", params={"q": SLOW}, headers=headers, timeout=60)
            slow.update(status=r.status_code, body=r.json(), done=time.monotonic())

        thread = threading.Thread(target=run_slow)
        started = time.monotonic()
        thread.start()
        time.sleep(0.3)  # let the slow query reach DuckDB
        fast_done = []
        for n in range(10):
            r = client.get(
                "/query",
                params={"q": f"SELECT count(*) AS n FROM inventory WHERE id > {n}"},
                headers=headers,
            )
            assert r.status_code == 200, r.text
            assert r.json()["data"] == [{"n": 3000 - n}]
            assert client.get("/health").status_code == 200  # the event loop is free
            fast_done.append(time.monotonic())
        thread.join(timeout=60)

        assert slow["status"] == 400
        assert slow["body"]["error"]["code"] == "query_timeout"  # type: ignore[index]
        # Every fast query finished while the slow one was still running.
        assert max(fast_done) < slow["done"]  # type: ignore[operator]
        assert slow["done"] - started >= 3.5  # type: ignore[operator]
        # The worker that ran the slow query is usable again.
        r = client.get("/query", params={"q": "SELECT 42 AS x"}, headers=headers)
        assert r.json()["data"] == [{"x": 42}]


def test_parallel_queries_share_the_pool(tmp_path, issuer):
    db = build_database(tmp_path / "source.db")
    publish_file(db, tmp_path / "store", tmp_path / "work")
    auth = issuer.settings_env()
    with make_app_client(
        serving_env(tmp_path / "store", tmp_path / "data", auth, QUERY_WORKERS="3")
    ) as client:
        headers = {"Authorization": f"Bearer {issuer.mint(sub='parallel')}"}
        results: list[int] = []

        def worker(k: int) -> None:
            for n in range(15):
                r = client.get(
                    "/query",
                    params={
                        "q": f"SELECT sum(quantity) AS s FROM inventory WHERE id % 7 = {(k + n) % 7}"
                    },
                    headers=headers,
                )
                results.append(r.status_code)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == [200] * 120
        assert client.app.state.query_service.executor.active == 0
