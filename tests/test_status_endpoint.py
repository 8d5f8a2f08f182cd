"""Status as data: the ETL writes `current/status.json` after each cycle (a failed
one too), and the API serves it at `GET /status` (scope `read:status`) merged
with its own freshness. Real ETL CLI, SeaweedFS, PostgreSQL, Gunicorn."""

from __future__ import annotations

import json
import time

import httpx
import sqlalchemy as sa

from analytics_shared.manifest import STATUS_KEY
from api_service.data.status_feed import EtlStatusFeed
from etl_service.demo_source import create_demo_source
from testsupport.api_server import ApiServer
from testsupport.snapshots import run_etl, store_from_env, wait_for


def _status(api: ApiServer, token: str) -> httpx.Response:
    return httpx.get(api.url + "/status", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_status_json_is_served_with_the_apis_freshness(platform_env, pg_url, issuer, tmp_path):
    source = create_demo_source(pg_url)
    with source.begin() as conn:  # a table the API's policy shows, failing in the ETL
        conn.execute(sa.text("DROP TABLE orders"))
    source.dispose()
    # "customers" syncs but is outside the API's default policy; "ghost" is nowhere.
    tables = "inventory,orders,customers,ghost"
    env = {**platform_env, "DATABASE_URL": pg_url, "TABLES_TO_SYNC": tables}
    env |= {"RETRY_ATTEMPTS": "1", "LOG_LEVEL": "WARNING"}
    first = run_etl(["sync"], env)
    assert first.returncode == 1, first.stderr  # two tables missing: partial
    store = store_from_env(env)
    written = json.loads(store.get_bytes(STATUS_KEY)[0])
    assert written["last_cycle"]["status"] == "partial" and written["last_cycle"]["published"]
    assert "state" not in written  # the state database's address stays private

    api = ApiServer(env, workers=1, log_path=tmp_path / "api.log").start()
    try:
        r = _status(api, issuer.mint(sub="ops", scopes="read:status"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["success"] is True and body["etl_error"] is None
        etl, served = body["etl"], body["api"]
        tables = {t["table_name"]: t for t in etl["tables"]}
        assert tables["inventory"]["row_count"] == 1000 and tables["inventory"]["watermark"]
        assert tables["inventory"]["open_dead_letters"] == 0
        assert 0 <= tables["inventory"]["lag_seconds"] < 120
        assert tables["orders"]["open_dead_letters"] == 1
        assert "orders" in tables["orders"]["last_error"]
        assert "ghost" not in tables and "customers" not in tables  # not the caller's app's
        assert etl["runs"][0]["status"] == "partial" and etl["commands_pending"] == 0
        assert served["data_version"] == etl["last_cycle"]["version"]
        assert served["up_to_date"] is True and served["data_age_seconds"] >= 0
        assert served["identity_provider"] == "ok" and served["worker_pid"] > 0

        # Without the scope: 403 in the error shape.
        r = _status(api, issuer.mint(sub="analyst", scopes="read:analytics read:schema"))
        assert r.status_code == 403
        error = r.json()
        assert error["success"] is False and error["error"]["code"] == "insufficient_scope"
        assert error["error"]["request_id"]

        # A failed cycle (the source unreachable) is visible without the state database.
        down = {**env, "SOURCE_URL": "postgresql://nobody@127.0.0.1:9/none"}
        assert run_etl(["sync"], down).returncode == 1
        time.sleep(1.1)  # the API reads the file at most once a second
        token = issuer.mint(sub="ops", scopes="read:status")

        def failed_cycle() -> dict[str, object] | None:
            body = _status(api, token).json()
            return body if body["etl"]["last_cycle"]["status"] == "failed" else None

        failed = wait_for(failed_cycle, 30)
        assert "source" in failed["etl"]["last_cycle"]["error"]
        assert failed["api"]["data_version"] == served["data_version"]  # still serving
    finally:
        api.stop()


def test_the_status_feed_reads_the_store_conditionally(s3_env, pg_url, data_dir):
    store = store_from_env(s3_env)
    feed = EtlStatusFeed(store, min_interval=0)
    assert feed.read().document is None and "not written" in (feed.read().error or "")
    store.put_bytes(STATUS_KEY, b'{"tables": [], "generated_at": "2026-01-01T00:00:00+00:00"}')
    first = feed.read()
    assert first.document is not None and first.error is None
    again = feed.read()  # unchanged: a 304, the same document
    assert again.document == first.document and again.error is None
    store.put_bytes(STATUS_KEY, b"not json")
    broken = feed.read()
    assert broken.document == first.document and "not readable" in (broken.error or "")
