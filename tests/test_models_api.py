"""Models reach the API: PostgreSQL source -> ETL (bundled models) -> store ->
API. A policy that names a model reads it (ad hoc and through a named query)
without being allowed the tables underneath; /schema lists it."""

from __future__ import annotations

import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.api_app import make_app_client, serving_env, write_whitelist

WHITELIST = {
    "policies": {
        "default": {
            "tables": ["v_inventory_summary", "order_revenue_daily"],
            "named_queries": ["revenue_for_status"],
        }
    },
    "named_queries": {
        "revenue_for_status": {
            "sql": "SELECT sum(revenue) AS revenue FROM order_revenue_daily WHERE status = $status",
            "parameters": {"status": {"type": "string", "max_length": 20}},
        }
    },
}


def test_a_whitelisted_model_is_served_listed_and_usable_in_named_queries(
    pg_url, tmp_path, auth_env, issuer
):
    source = create_demo_source(pg_url)
    try:
        _check_models_through_the_api(source, pg_url, tmp_path, auth_env, issuer)
    finally:
        source.dispose()


def _check_models_through_the_api(source, pg_url, tmp_path, auth_env, issuer) -> None:
    store = tmp_path / "store"
    settings = EtlSettings(
        SOURCE_URL=pg_url,
        DATABASE_URL=pg_url,
        STORAGE_URL=store.as_uri(),
        DATA_DIR=str(tmp_path / "etl"),
        TABLES_TO_SYNC="inventory,products,orders",
    )
    etl = SyncEngine.from_settings(settings, progress=False)
    try:
        assert etl.run_cycle().published
    finally:
        etl.close()

    whitelist = write_whitelist(tmp_path / "whitelist.json", WHITELIST)
    env = serving_env(store, tmp_path / "api", auth_env, QUERY_WHITELIST_PATH=str(whitelist))
    headers = {"Authorization": f"Bearer {issuer.mint(sub='models-user')}"}
    with make_app_client(env) as client:
        schema = client.get("/schema", headers=headers).json()
        assert schema["tables"] == {}  # no table is allowed, only the two models
        assert set(schema["models"]) == {"v_inventory_summary", "order_revenue_daily"}
        summary = schema["models"]["v_inventory_summary"]
        assert summary["kind"] == "view" and summary["description"].startswith(
            "The whole inventory"
        )
        assert [c["name"] for c in summary["columns"]][:2] == ["total_items", "total_quantity"]

        r = client.post(
            "/query",
            json={"sql": "SELECT total_items, total_quantity FROM v_inventory_summary"},
            headers=headers,
        )
        assert r.status_code == 200, r.text
        with source.connect() as conn:
            items, quantity = conn.execute(
                sa.text("SELECT count(*), sum(quantity) FROM inventory")
            ).one()
        assert r.json()["data"] == [{"total_items": items, "total_quantity": quantity}]

        # The table under the view stays closed to this application.
        r = client.post("/query", json={"sql": "SELECT count(*) FROM inventory"}, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "table_not_allowed"

        r = client.post(
            "/queries/revenue_for_status", json={"params": {"status": "paid"}}, headers=headers
        )
        assert r.status_code == 200, r.text
        with source.connect() as conn:
            revenue = conn.execute(
                sa.text("SELECT sum(total_amount) FROM orders WHERE status = 'paid'")
            ).scalar()
        assert r.json()["data"] == [{"revenue": str(revenue)}]
