"""A full disk under the API's DATA_DIR: the new version cannot be downloaded, the
one in service keeps answering, nothing half-written stays, and the next
poll after space is back swaps to the new version."""

from __future__ import annotations

from testsupport.api_app import make_app_client, serving_env
from testsupport.publishing import publish_file
from testsupport.serving import build_database
from testsupport.snapshots import wait_for

SUM = "SELECT sum(quantity) AS total FROM inventory"


def test_a_full_disk_keeps_the_version_in_service_until_space_is_back(tmp_path, tiny_disk, issuer):
    disk = tiny_disk("api-data", 24)
    source, store, work = tmp_path / "source.db", tmp_path / "store", tmp_path / "work"
    first = publish_file(build_database(source, inventory_rows=20_000), store, work)
    with make_app_client(serving_env(store, disk.root, issuer.settings_env())) as client:
        scopes = "read:analytics read:status"  # /health's details need read:status
        client.headers["Authorization"] = f"Bearer {issuer.mint(sub='disk', scopes=scopes)}"
        total_v1 = client.get("/query", params={"q": SUM}).json()["data"][0]["total"]
        cached = sorted(p.name for p in disk.root.iterdir())

        disk.fill()
        second = publish_file(build_database(source, inventory_rows=20_000, marker=1), store, work)
        health = wait_for(
            lambda: (h := client.get("/health").json())["last_refresh_failed"] and h,
            timeout=20,
            what="a failed refresh",
        )
        assert health["status"] == "degraded" and health["data_version"] == first.version
        assert health["latest_version_seen"] == second.version
        assert "No space left on device" in health["last_refresh_error"]
        r = client.get("/query", params={"q": SUM})
        assert r.status_code == 200 and r.headers["X-Data-Version"] == first.version
        assert r.json()["data"][0]["total"] == total_v1
        # No partial download or decompressed file was left behind.
        assert sorted(p.name for p in disk.root.iterdir() if p != disk.filler) == cached

        disk.release()
        wait_for(
            lambda: client.get("/health").json()["data_version"] == second.version,
            timeout=20,
            what="the swap to the second version",
        )
        r = client.get("/query", params={"q": SUM})
        assert r.headers["X-Data-Version"] == second.version
        assert r.json()["data"][0]["total"] == total_v1 + 20_000  # marker=1: +1 per row
        assert client.get("/health").json()["status"] == "ok"
