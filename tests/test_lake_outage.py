"""The lake's catalog, then the store, unreachable for the ETL and the API (a
proxy that cuts and refuses connections: a real outage). Each time the cycle
is retried, then fails and is dead-lettered; the API keeps serving its
replica; once the outage is over the next cycle publishes and the API
catches up with the source."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from testsupport.api_server import ApiServer
from testsupport.lake import (
    answer,
    change_inventory,
    published_manifest,
    source_inventory,
    wait_for_version,
)
from testsupport.proxy import TcpProxy
from testsupport.seaweedfs import SeaweedFS
from testsupport.snapshots import run_etl


@pytest.mark.slow
def test_catalog_and_store_outages_in_lake_mode(
    lake_platform: tuple[dict[str, str], sa.Engine],
    seaweedfs: SeaweedFS,
    issuer,
    tmp_path: Path,
) -> None:
    base, source = lake_platform
    catalog = sa.make_url(base["LAKE_CATALOG_URL"])
    proxies = {
        "catalog": TcpProxy(catalog.port or 5432, catalog.host or "127.0.0.1"),
        "store": TcpProxy(seaweedfs.s3_port),
    }
    env = {
        **base,
        "LAKE_CATALOG_URL": catalog.set(port=proxies["catalog"].port).render_as_string(
            hide_password=False
        ),
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{proxies['store'].port}",
    }
    api = ApiServer(env, workers=1, log_path=tmp_path / "api.log")
    token = issuer.mint(sub="lake-outage")
    try:
        api.start(ready_timeout=120)
        for n, (what, proxy) in enumerate(proxies.items()):
            before = answer(api, token)
            change_inventory(source, delta=10 + n, delete_id=40 + n)
            proxy.drop()
            try:
                failed = run_etl(["sync"], env)
                assert failed.returncode != 0, f"{what} down: {failed.stdout}"
                letters = json.loads(run_etl(["dlq", "list", "--json"], env).stdout)
                cycle = [d for d in letters if d["table_name"] is None]
                assert cycle and cycle[-1]["attempts"] == 3, (what, letters)  # retried
                for _ in range(5):
                    body = answer(api, token)
                    assert (body["data_version"], body["data"]) == (
                        before["data_version"],
                        before["data"],
                    ), what
                assert httpx.get(api.url + "/health", timeout=10).status_code == 200
            finally:
                proxy.restore()
            recovered = run_etl(["sync"], env)
            assert recovered.returncode == 0, recovered.stderr[-3000:]
            manifest = published_manifest(env)
            assert manifest.version != before["data_version"]
            wait_for_version(api, manifest.version)
            assert answer(api, token)["data"] == source_inventory(source), what
    finally:
        api.stop()
        for proxy in proxies.values():
            proxy.close()
