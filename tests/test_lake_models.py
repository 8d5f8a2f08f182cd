"""Models in lake mode: their definitions travel in the lake (`__analytics_models`),
an API host builds them into the copy it installs, a model edit alone is a new
lake version, and a rollback restores the old definitions with the old data.
The answers must equal file mode's for the same source."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import sqlalchemy as sa

from analytics_shared.lake import LakeError, run_lake
from analytics_shared.lake_models import (
    MODELS_TABLE,
    LakeModel,
    LakeModelError,
    create_models_table,
)
from analytics_shared.manifest import ModelInfo
from analytics_shared.snapshot_file import table_checksum
from api_service.data.lake_replica import LakeReplicator
from etl_service.demo_source import create_demo_source
from etl_service.models import BUNDLED_MODELS_DIR
from etl_service.ops.lake_versions import lake_rollback
from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.api_app import make_app_client, serving_env, write_whitelist
from testsupport.api_server import ApiServer
from testsupport.lake import answer, lake_table, published_manifest, wait_for_version

TABLES = "inventory,products,orders"
MODELS = ("order_revenue_daily", "stock_by_warehouse_product", "v_inventory_summary")
QUERIES = {name: f"SELECT * FROM {name} ORDER BY ALL" for name in MODELS}
WHITELIST = {
    "policies": {"default": {"tables": list(MODELS), "named_queries": ["revenue_for_status"]}},
    "named_queries": {
        "revenue_for_status": {
            "sql": "SELECT sum(revenue) AS revenue FROM order_revenue_daily WHERE status = $status",
            "parameters": {"status": {"type": "string", "max_length": 20}},
        }
    },
}
# The edit of the second test: order_revenue_daily keeps only paid orders.
PAID_ONLY = """-- description: Paid orders and revenue per day, status and currency
-- materialized: table
SELECT CAST(created_at AS DATE) AS order_date, status, currency,
       count(*) AS orders, sum(total_amount) AS revenue
FROM orders WHERE status = 'paid'
GROUP BY CAST(created_at AS DATE), status, currency
"""


def _answers(client: httpx.Client, headers: dict[str, str]) -> dict[str, Any]:
    """Each model's rows and the named query's answer, with the version that gave them."""
    out: dict[str, Any] = {}
    for name, sql in QUERIES.items():
        r = client.post("/query", json={"sql": sql}, headers=headers)
        assert r.status_code == 200, r.text
        out[name] = r.json()["data"]
        out.setdefault("version", r.json()["data_version"])
    r = client.post(
        "/queries/revenue_for_status", json={"params": {"status": "paid"}}, headers=headers
    )
    assert r.status_code == 200, r.text
    out["revenue_for_status"] = r.json()["data"]
    return out


def _serving(client: httpx.Client, version: str, timeout: float = 30) -> None:
    """Until the in-process API serves `version` (it polls every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while client.get("/health").json().get("data_version") != version:
        assert time.monotonic() < deadline, f"the API did not serve {version}"
        time.sleep(0.1)


@contextmanager
def _lake_api(
    lake_env: dict[str, str], auth_env: dict[str, str], pg_url: str, data_dir: Path
) -> Iterator[httpx.Client]:
    """The API in-process over the cache the host's replicator (same DATA_DIR) writes."""
    whitelist = write_whitelist(data_dir.parent / f"{data_dir.name}-whitelist.json", WHITELIST)
    env = {
        **lake_env,
        **auth_env,
        "DATA_DIR": str(data_dir),
        "LAKE_CATALOG_URL": pg_url,
        "QUERY_WHITELIST_PATH": str(whitelist),
        "SNAPSHOT_POLL_SECONDS": "0.2",
        "RATE_LIMIT_REQUESTS": "1000000",
    }
    with make_app_client(env) as client:
        yield client


def _bump_inventory(source: sa.Engine) -> None:
    with source.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE inventory SET quantity = quantity + 1,"
                " updated_at = now() AT TIME ZONE 'UTC' WHERE id <= 5"
            )
        )


def _file_mode_answers(
    pg_url: str, tmp_path: Path, auth_env: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    """The same source through file mode (own state, own store)."""
    store = tmp_path / "file-store"
    etl = SyncEngine.from_settings(
        EtlSettings(
            SOURCE_URL=pg_url,
            DATABASE_URL=f"sqlite:///{tmp_path / 'file-state.db'}",
            STORAGE_URL=store.as_uri(),
            DATA_DIR=str(tmp_path / "file-etl"),
            TABLES_TO_SYNC=TABLES,
        ),
        progress=False,
    )
    try:
        assert etl.run_cycle().published
    finally:
        etl.close()
    whitelist = write_whitelist(tmp_path / "file-whitelist.json", WHITELIST)
    env = serving_env(store, tmp_path / "file-api", auth_env, QUERY_WHITELIST_PATH=str(whitelist))
    with make_app_client(env) as client:
        return _answers(client, headers)


def test_lake_mode_serves_the_models_as_file_mode_does(
    pg_url: str,
    lake_env: dict[str, str],
    auth_env: dict[str, str],
    lake_etl: Callable[..., SyncEngine],
    make_replicator: Callable[[str], LakeReplicator],
    issuer: Any,
    tmp_path: Path,
) -> None:
    source = create_demo_source(pg_url)
    headers = {"Authorization": f"Bearer {issuer.mint(sub='lake-models')}"}
    try:
        etl = lake_etl(TABLES_TO_SYNC=TABLES)
        first = etl.run_cycle()
        assert first.status == "success", first.error
        manifest = etl.publisher.current()
        assert manifest is not None and manifest.lake is not None
        assert sorted(manifest.models) == sorted(MODELS)
        assert manifest.models["order_revenue_daily"].row_count
        # The definitions ride in the lake, but users never see them as a table.
        assert MODELS_TABLE not in manifest.tables
        assert manifest.lake.primary_keys[MODELS_TABLE] == ["name"]
        assert MODELS_TABLE in manifest.lake.checksums

        replicator = make_replicator("api")
        assert replicator.run_once() == manifest.version
        installed = duckdb.connect(
            str(replicator.cache.directory / f"{manifest.version}.db"), read_only=True
        )
        try:
            names = {r[0] for r in installed.execute("SHOW TABLES").fetchall()}
        finally:
            installed.close()
        assert set(MODELS) <= names and MODELS_TABLE not in names
        replica = duckdb.connect(str(replicator.replica), read_only=True)
        try:  # the replica itself stays as the lake process wrote it: no models
            held = {r[0] for r in replica.execute("SHOW TABLES").fetchall()}
        finally:
            replica.close()
        assert MODELS_TABLE in held and not held & set(MODELS)

        with _lake_api(lake_env, auth_env, pg_url, tmp_path / "api") as client:
            lake_answers = _answers(client, headers)
            schema = client.get("/schema", headers=headers).json()
            refused = client.post(
                "/query", json={"sql": f"SELECT * FROM {MODELS_TABLE}"}, headers=headers
            )
        assert set(schema["models"]) == set(MODELS) and MODELS_TABLE not in schema["tables"]
        assert refused.status_code == 400, refused.text
        assert lake_answers.pop("version") == manifest.version

        file_answers = _file_mode_answers(pg_url, tmp_path, auth_env, headers)
        file_answers.pop("version")
        assert all(lake_answers[name] for name in MODELS)
        assert lake_answers == file_answers

        # Unchanged definitions are not sent again by a running ETL; a restarted
        # one sends them once more and the lake writes nothing for them.
        for restart in (False, True):
            if restart:
                etl.close()
                etl = lake_etl(TABLES_TO_SYNC=TABLES)
            _bump_inventory(source)
            cycle = etl.run_cycle()
            assert cycle.published, cycle.error
            assert etl.lake is not None
            sent = etl.lake.last_commit["tables"].get(MODELS_TABLE)
            assert sent == ({"mode": "unchanged", "deleted": 0, "upserted": 0} if restart else None)
            assert replicator.run_once() == cycle.version
        assert replicator.status["bootstraps_total"] == 1
    finally:
        source.dispose()


def test_a_model_edit_alone_is_a_new_lake_version_and_rollback_restores_the_old_definition(
    pg_url: str,
    lake_env: dict[str, str],
    auth_env: dict[str, str],
    lake_etl: Callable[..., SyncEngine],
    make_replicator: Callable[[str], LakeReplicator],
    issuer: Any,
    tmp_path: Path,
) -> None:
    source = create_demo_source(pg_url)
    headers = {"Authorization": f"Bearer {issuer.mint(sub='lake-model-edit')}"}
    models_dir = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS_DIR, models_dir)
    try:
        etl = lake_etl(TABLES_TO_SYNC=TABLES, MODELS_DIR=str(models_dir))
        replicator = make_replicator("api")
        first = etl.run_cycle()
        assert first.status == "success", first.error
        v1, m1 = first.version, etl.publisher.current()
        assert v1 is not None and m1 is not None and replicator.run_once() == v1
        with _lake_api(lake_env, auth_env, pg_url, tmp_path / "api") as client:
            before = _answers(client, headers)
            assert before["version"] == v1

            # The model's SQL changes, the source does not.
            (models_dir / "order_revenue_daily.sql").write_text(PAID_ONLY)
            etl.close()  # the ETL reads its models when it starts
            etl = lake_etl(TABLES_TO_SYNC=TABLES, MODELS_DIR=str(models_dir))
            edited = etl.run_cycle()
            assert edited.status == "success", edited.error
            v2 = edited.version
            assert edited.published and v2 is not None and v2 != v1
            m2 = etl.publisher.current()
            assert m2 is not None and m2.lake is not None and m1.lake is not None
            assert {t: m2.lake.checksums[t] for t in m2.tables} == {
                t: m1.lake.checksums[t] for t in m1.tables
            }, "only the definitions changed"
            assert m2.models["order_revenue_daily"].sql_sha256 != (
                m1.models["order_revenue_daily"].sql_sha256
            )
            assert replicator.run_once() == v2
            assert replicator.status["bootstraps_total"] == 1, "advanced by the change"
            _serving(client, v2)
            after = _answers(client, headers)
            paid = [r for r in before["order_revenue_daily"] if r["status"] == "paid"]
            assert paid and after["order_revenue_daily"] == paid
            assert after["order_revenue_daily"] != before["order_revenue_daily"]
            assert after["revenue_for_status"] == before["revenue_for_status"]
            assert after["stock_by_warehouse_product"] == before["stock_by_warehouse_product"]

            # Rollback to v1: its data AND its definitions.
            rolled = lake_rollback(etl.lake, etl.warehouse, v1, tmp_path)  # type: ignore[arg-type]
            assert rolled.version not in (v1, v2)
            assert rolled.models["order_revenue_daily"] == m1.models["order_revenue_daily"]
            assert MODELS_TABLE not in rolled.tables
            assert replicator.run_once() == rolled.version
            _serving(client, rolled.version)
            back = _answers(client, headers)
            assert back.pop("version") == rolled.version
            before.pop("version")
            assert back == before

            # The rollback holds until the source changes; then the next cycle
            # publishes the source's data with the current definitions.
            with source.begin() as conn:
                conn.execute(
                    sa.text(
                        "UPDATE orders SET status = 'paid', updated_at = now() AT TIME ZONE 'UTC'"
                        " WHERE id <= 3"
                    )
                )
            moved = etl.run_cycle()
            assert moved.published and moved.version is not None
            assert replicator.run_once() == moved.version
            _serving(client, moved.version)
            now = _answers(client, headers)
            assert {r["status"] for r in now["order_revenue_daily"]} == {"paid"}
            with source.connect() as conn:
                paid_orders = conn.execute(
                    sa.text("SELECT count(*) FROM orders WHERE status = 'paid'")
                ).scalar()
            assert sum(r["orders"] for r in now["order_revenue_daily"]) == paid_orders
    finally:
        source.dispose()


@pytest.mark.slow
def test_a_gunicorn_api_serves_a_lake_model(
    lake_platform: tuple[dict[str, str], sa.Engine], issuer: Any, tmp_path: Path
) -> None:
    """Through a real API process (Gunicorn, its master's replicator)."""
    env, source = lake_platform
    version = published_manifest(env).version
    api = ApiServer(env, workers=2, log_path=tmp_path / "api.log")
    token = issuer.mint(sub="lake-models-gunicorn")
    try:
        api.start(ready_timeout=120)
        wait_for_version(api, version)
        body = answer(
            api,
            token,
            "SELECT status, sum(orders) AS orders FROM order_revenue_daily"
            " GROUP BY status ORDER BY status",
        )
        assert body["data_version"] == version
        with source.connect() as conn:
            expected = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.text(
                        "SELECT status, count(*) AS orders FROM orders"
                        " GROUP BY status ORDER BY status"
                    )
                )
            ]
        assert expected and body["data"] == expected
        assert "order_revenue_daily" in published_manifest(env).models
    finally:
        api.stop()


def test_the_lake_commands_for_the_definitions_table(
    pg_url: str, lake_etl: Callable[..., SyncEngine], tmp_path: Path
) -> None:
    """Re-sending the definitions the lake holds commits nothing; restoring a lake
    version an older ETL wrote (no `__analytics_models`) empties them, as that
    version served no models, while any other missing table still fails."""
    source = create_demo_source(pg_url)
    try:
        etl = lake_etl(TABLES_TO_SYNC=TABLES)
        assert etl.run_cycle().status == "success"
        assert etl.lake is not None
        config = etl.lake.config
        lake_table(config, MODELS_TABLE, tmp_path).close()  # exports it as Parquet
        resend = {
            "name": MODELS_TABLE,
            "primary_key": ["name"],
            "full": str(tmp_path / f"{MODELS_TABLE}.parquet"),
            "unless_equal": True,
        }
        done = run_lake(config, "publish", {"tables": [resend]})
        assert done["tables"][MODELS_TABLE]["mode"] == "unchanged"
        assert done["snapshot_id"] == done["previous_snapshot_id"], "no new snapshot"

        with pytest.raises(LakeError):
            run_lake(config, "restore", {"snapshot_id": 0, "tables": [MODELS_TABLE]})
        request = {"snapshot_id": 0, "tables": [MODELS_TABLE], "empty_if_absent": [MODELS_TABLE]}
        restored = run_lake(config, "restore", request)["snapshot_id"]
        assert restored > done["snapshot_id"]
        held = lake_table(config, MODELS_TABLE, tmp_path / "restored")
        try:
            assert held.execute(f"SELECT count(*) FROM {MODELS_TABLE}").fetchall() == [(0,)]
        finally:
            held.close()
    finally:
        source.dispose()


def test_a_model_that_fails_on_the_api_host_fails_the_round_and_the_old_version_stays(
    pg_url: str,
    lake_etl: Callable[..., SyncEngine],
    make_replicator: Callable[[str], LakeReplicator],
    tmp_path: Path,
) -> None:
    source = create_demo_source(pg_url)
    try:
        etl = lake_etl(TABLES_TO_SYNC=TABLES)
        assert etl.run_cycle().status == "success"
        good, etag = etl.publisher.read_current()
        assert good is not None and good.lake is not None and etl.lake is not None
        replicator = make_replicator("api")
        assert replicator.run_once() == good.version

        # A definition DuckDB refuses reaches the lake and the manifest (as if
        # written by a broken ETL): the host must not install that version.
        broken = LakeModel("broken", "table", "SELECT no_such_column FROM orders", 0, "0" * 64)
        con = duckdb.connect()
        try:
            create_models_table(con, [broken])
            checksum = table_checksum(con, MODELS_TABLE)
            path = tmp_path / "broken.parquet"
            con.execute(f"COPY {MODELS_TABLE} TO '{path}' (FORMAT parquet)")
        finally:
            con.close()
        sent = {"name": MODELS_TABLE, "primary_key": ["name"], "full": str(path)}
        snapshot = run_lake(etl.lake.config, "publish", {"tables": [sent]})["snapshot_id"]
        bad = etl.lake.manifest_for(
            snapshot,
            good.tables,
            {**good.lake.checksums, MODELS_TABLE: checksum},
            good.lake.primary_keys,
            good,
            {"broken": ModelInfo(kind="table", row_count=0, sql_sha256="0" * 64)},
        )
        etl.publisher.commit(bad, etag)
        with pytest.raises(LakeModelError, match=rf"{bad.version}: model 'broken' failed to build"):
            replicator.run_once()
        assert replicator.cache.has(good) and not replicator.cache.has(bad)
        assert not (replicator.workdir / "install.db").exists()

        # The next cycle with a change sends the ETL's definitions again (the
        # manifest names others) and the host installs that version.
        _bump_inventory(source)
        fixed = etl.run_cycle()
        assert fixed.published and fixed.version is not None
        assert replicator.run_once() == fixed.version
    finally:
        source.dispose()
