"""PostgreSQL source -> ETL -> SeaweedFS -> API under Gunicorn -> HTTP query."""

from __future__ import annotations

import httpx
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from testsupport.api_server import ApiServer
from testsupport.snapshots import run_etl


def test_source_rows_reach_the_api_through_every_hop(platform_env, pg_url, issuer, tmp_path):
    source = create_demo_source(pg_url)
    result = run_etl(["sync"], platform_env)
    assert result.returncode == 0, result.stderr + result.stdout

    api = ApiServer(platform_env, workers=2, log_path=tmp_path / "api.log").start()
    try:
        token = issuer.mint(sub="e2e-user")
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.get(
            api.url + "/query",
            params={"q": "SELECT id, product_id, warehouse, quantity FROM inventory ORDER BY id"},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        with source.connect() as conn:
            expected = [
                dict(row._mapping)
                for row in conn.execute(
                    sa.text("SELECT id, product_id, warehouse, quantity FROM inventory ORDER BY id")
                )
            ]
        assert body["success"] is True
        assert body["row_count"] == len(expected) == 1000
        assert body["data"] == expected
        assert body["truncated"] is False
        assert body["data_version"]

        # Decimals keep their exact value (as strings) through every hop.
        r = httpx.post(
            api.url + "/query",
            json={"sql": "SELECT sum(unit_price) AS total FROM products"},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        with source.connect() as conn:
            total = conn.execute(sa.text("SELECT sum(unit_price) FROM products")).scalar()
        assert r.json()["data"] == [{"total": str(total)}]

        # No token: refused with a challenge, and the error has the one shape.
        r = httpx.get(api.url + "/query", params={"q": "SELECT 1"}, timeout=10)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["success"] is False and r.json()["error"]["code"] == "unauthorized"
    finally:
        api.stop()
        source.dispose()
