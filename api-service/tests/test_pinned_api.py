"""API guarantees pinned end to end (the real app under Uvicorn, a real store):
`/schema` shows only the caller's tables, the documented error codes
(`unknown_application`, `no_data`, `internal_error`) come in the one error
shape, and a stored object whose sha256 differs from the manifest is never
served even when its size, its DuckDB checksums and its row counts all fit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from analytics_shared.manifest import MANIFEST_KEY
from analytics_shared.object_store import LocalObjectStore
from etl_service.publisher import Publisher
from testsupport.api_app import api_env, make_app_client, serving_env
from testsupport.publishing import publish_database

WHITELIST = {
    "unknown_apps": "default",
    "apps": {"crm-app": "crm", "locked-app": "locked"},
    "policies": {
        "default": {"tables": ["inventory", "products"]},
        "crm": {"tables": ["customers", "orders"]},
        "locked": {"tables": ["inventory"], "allow_ad_hoc_sql": False},
    },
}


@pytest.fixture(scope="module")
def client(tmp_path_factory, issuer):
    env = api_env(tmp_path_factory.mktemp("pinned"), issuer, WHITELIST)
    with make_app_client(env) as c:
        yield c


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and set(body["error"]) == {"code", "message", "request_id"}
    return body["error"]


def _bearer(issuer, **claims) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(**claims)}"}


def test_schema_lists_only_the_tables_of_the_callers_policy(client, issuer):
    default = client.get("/schema", headers=_bearer(issuer, azp="some-app")).json()
    assert sorted(default["tables"]) == ["inventory", "products"]
    crm = client.get("/schema", headers=_bearer(issuer, azp="crm-app")).json()
    assert sorted(crm["tables"]) == ["customers", "orders"]
    assert [c["name"] for c in crm["tables"]["customers"]["columns"]] == [
        "id",
        "email",
        "api_secret",
    ]


def test_an_unregistered_app_is_refused_with_unknown_application(tmp_path, issuer):
    env = api_env(tmp_path, issuer, {**WHITELIST, "unknown_apps": "refuse"})
    with make_app_client(env) as refusing:
        for path in ("/schema", "/query?q=SELECT%201"):
            err = _error(refusing.get(path, headers=_bearer(issuer, azp="stranger")), 403)
            assert err["code"] == "unknown_application"
        # A registered app on the same API is served.
        assert refusing.get("/schema", headers=_bearer(issuer, azp="crm-app")).status_code == 200


def test_no_snapshot_yet_is_503_no_data(tmp_path, issuer):
    env = serving_env(tmp_path / "empty-store", tmp_path / "var", issuer.settings_env())
    (tmp_path / "empty-store").mkdir()
    with make_app_client(env, wait_for_data=False) as empty:
        for path in ("/schema", "/query?q=SELECT%201"):
            err = _error(empty.get(path, headers=_bearer(issuer)), 503)
            assert err["code"] == "no_data"
        assert empty.get("/health").status_code == 503


class _BrokenSnapshots:
    """The app's SnapshotManager with a lease() that fails like a bug would."""

    def __init__(self, real: object) -> None:
        self._real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def lease(self):
        raise RuntimeError("bug at /srv/app/secret.py with token abc")


def test_an_unexpected_failure_is_500_internal_error_without_details(client, issuer):
    real = client.app.state.snapshots
    client.app.state.snapshots = _BrokenSnapshots(real)
    try:
        response = client.get("/schema", headers=_bearer(issuer))
    finally:
        client.app.state.snapshots = real
    err = _error(response, 500)
    assert err["code"] == "internal_error"
    assert "secret" not in response.text and "/srv/" not in response.text
    # The service did not die of it. (Starlette re-raises after the 500 is sent,
    # so Uvicorn closes that keep-alive connection: ask on a new one.)
    with httpx.Client(base_url=str(client.base_url), timeout=30) as fresh:
        assert fresh.get("/schema", headers=_bearer(issuer)).status_code == 200


def _publish_quantity(store: LocalObjectStore, work: Path, quantity: int):
    db = work / f"q{quantity}.duckdb"
    con = duckdb.connect(str(db))
    try:
        con.execute(
            "CREATE TABLE inventory AS SELECT range AS id, ? AS quantity FROM range(50)",
            [quantity],
        )
        return publish_database(con, store, work, publisher=Publisher(store, compression="none"))
    finally:
        con.close()


def _same_shape_file(work: Path, quantity: int) -> bytes:
    """A valid DuckDB snapshot with the same table and row count, other values."""
    db = work / f"forged{quantity}.duckdb"
    con = duckdb.connect(str(db))
    con.execute(
        "CREATE TABLE inventory AS SELECT range AS id, ? AS quantity FROM range(50)", [quantity]
    )
    con.close()
    out = work / f"forged{quantity}-export.db"
    con = duckdb.connect(str(db))
    try:
        from etl_service.export import export_snapshot

        export_snapshot(con, out)
    finally:
        con.close()
    return out.read_bytes()


def test_the_api_refuses_an_uncompressed_snapshot_whose_sha256_differs(tmp_path, issuer):
    store_root, work = tmp_path / "store", tmp_path / "work"
    store = LocalObjectStore(store_root)
    work.mkdir()
    v1 = _publish_quantity(store, work, 1)
    env = serving_env(store_root, tmp_path / "var", issuer.settings_env())
    auth = _bearer(issuer)
    with make_app_client(env) as api:
        assert api.get("/health").json()["data_version"] == v1.version
        # v2 is published (built in a staging store), but the object stored under
        # its key is another valid DuckDB file of exactly the same size and row
        # count (quantity 666); the object goes in first, the manifest last.
        staging = tmp_path / "staging"
        v2 = _publish_quantity(LocalObjectStore(staging), work, 2)
        forged = _same_shape_file(work, 666)
        assert len(forged) == v2.size  # a size check cannot tell
        obj = store_root / v2.snapshot_key
        obj.write_bytes(forged)
        manifest = store_root / MANIFEST_KEY
        tmp = manifest.with_name("manifest.json.tmp")
        tmp.write_bytes((staging / MANIFEST_KEY).read_bytes())
        os.replace(tmp, manifest)
        deadline = time.monotonic() + 30
        details = {"Authorization": f"Bearer {issuer.mint(scopes='read:status')}"}
        while True:
            health = api.get("/health", headers=details).json()  # refresh errors are details
            if health["latest_version_seen"] == v2.version and health["last_refresh_failed"]:
                break
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert "failed verification" in health["last_refresh_error"]
        assert health["data_version"] == v1.version
        answer = api.get(
            "/query", params={"q": "SELECT DISTINCT quantity FROM inventory"}, headers=auth
        )
        assert answer.status_code == 200 and answer.json()["data"] == [{"quantity": 1}]
